"""The ``jaxalign`` command line: one module per group of subcommands (``model``: info/export,
``train``: every algorithm and ``plan``, ``generate``, ``demo``, ``ape``); this module builds the parser.

Every user-input problem is a :class:`~jaxalign.errors.JaxalignError`: printed as one
``error: ...`` line on stderr with exit code 2, never a traceback. A full disk is one
``error: no space left on device while writing PATH (...)`` line and exit code 28
(:data:`~jaxalign.errors.NO_SPACE_EXIT`).

Start-up is kept light: building the parser, ``--help`` (with each training command's config
keys, read from the jax-free config dataclasses), ``--version`` and loading and validating a
config import no JAX, Flax or transformers; the commands import them when they need them.
TRL's option names (``--learning_rate 1e-4``, ``--output_dir DIR``) become overrides through
:mod:`jaxalign.config.trl`.
"""

from __future__ import annotations

import argparse
import sys

from jaxalign.cli import ape as ape_cli
from jaxalign.cli import demo as demo_cli
from jaxalign.cli import generate, model, train
from jaxalign.errors import NO_SPACE_EXIT, JaxalignError, NoSpaceLeft, is_no_space, written_path


class _Parser(argparse.ArgumentParser):
    """A parser whose epilog may be computed when the help is shown (``epilog_fn``): a training
    command's config keys are only read for its ``--help``."""

    def __init__(self, *args, epilog_fn=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.epilog_fn = epilog_fn

    def format_help(self) -> str:
        if self.epilog_fn is not None and self.epilog is None:
            self.epilog = self.epilog_fn()
        return super().format_help()


class _Version(argparse.Action):
    """``--version``: the installed package's version (or the source tree's), then exit 0."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"jaxalign {version()}")
        parser.exit()


def version() -> str:
    """The installed distribution's version; the source tree's ``jaxalign.__version__`` when
    jaxalign runs uninstalled (from a checkout on ``PYTHONPATH``)."""
    from importlib import metadata

    try:
        return metadata.version("jaxalign")
    except metadata.PackageNotFoundError:
        # The package is loaded before any of its modules, so this reads it rather than importing
        # the users' façade (tests/test_layers.py).
        return sys.modules["jaxalign"].__version__


def _listing(algorithm: str):
    def epilog() -> str:
        from jaxalign.config.fields import help_listing

        return help_listing(algorithm)

    return epilog


def build_parser() -> argparse.ArgumentParser:
    """The ``jaxalign`` argument parser (every subcommand); imports nothing heavy."""
    p = _Parser(prog="jaxalign", description="Align language models in JAX.")
    p.add_argument("--version", action=_Version, help="print the version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = sub.add_parser("info", help="architecture, sizes and parameter count of a model")
    info.add_argument("--model", required=True,
                      help="HF dir, .gguf file, alias (smollm2-135m-instruct) or Hub id (org/name[@revision])")
    info.add_argument("--dtype", choices=["float32", "bfloat16"], default=None)
    info.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    info.set_defaults(func=model.cmd_info)

    exp = sub.add_parser("export", help="write a model (HF dir or GGUF) as a Hugging Face directory")
    exp.add_argument("--model", required=True, help="HF dir, .gguf file, alias or Hub id (org/name[@revision])")
    exp.add_argument("--out", required=True, help="output directory")
    exp.add_argument("--dtype", choices=["float32", "bfloat16"], default=None)
    exp.set_defaults(func=model.cmd_export)

    plan = sub.add_parser("plan", help="memory per device of a whole run (sampling, reference, train step), planned from abstract shapes; and whether it fits")
    plan.add_argument("--config", required=True, help="YAML run config (its algorithm: key picks the algorithm)")
    plan.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    plan.add_argument("--devices", type=int, default=None,
                      help="plan for a mesh of N devices (mesh.fsdp, or the -1 axis, takes them); on a CPU the "
                           "N host devices are made (XLA_FLAGS=--xla_force_host_platform_device_count=N)")
    plan.add_argument("--device-memory", default=None, metavar="BYTES",
                      help="memory per device, e.g. 16GiB (sets train.device_memory_limit)")
    plan.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, as for training")
    plan.set_defaults(func=train.cmd_plan)

    from jaxalign.algorithms import registry

    for row in registry.ALGORITHMS.values():
        name = row.name
        tr = sub.add_parser(name, help=f"{row.help} (configs/{name}_*.yaml)", epilog_fn=_listing(name),
                            formatter_class=argparse.RawDescriptionHelpFormatter,
                            description=f"{row.help}.\nTRL's option names are accepted where they mean "
                                        "a jaxalign key (--learning_rate 1e-4 = optim.lr=1e-4).")
        tr.add_argument("--config", help="YAML run config")
        tr.add_argument("--run-dir", help="output directory (default: runs/<algorithm>-<time>)")
        tr.add_argument("--quiet", action="store_true", help="no progress bar")
        mp = tr.add_argument_group("multi-process runs (every process runs the same command; "
                                   "README: Multi-process and TPU VM)")
        mp.add_argument("--coordinator", metavar="HOST:PORT",
                        help="address of process 0 (env JAXALIGN_COORDINATOR)")
        mp.add_argument("--num-processes", type=int, metavar="N", help="env JAXALIGN_NUM_PROCESSES")
        mp.add_argument("--process-id", type=int, metavar="I", help="0..N-1 (env JAXALIGN_PROCESS_ID)")
        mp.add_argument("--distributed", action="store_true",
                        help="auto-detect the processes (Cloud TPU VM, SLURM, Open MPI)")
        tr.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted overrides, e.g. optim.lr=1e-4 train.steps=100")
        tr.set_defaults(func=train.cmd_train)

    gen = sub.add_parser("generate", help="sample completions from a model")
    generate.add_generate_args(gen)
    gen.set_defaults(func=generate.generate_cli)

    demo = sub.add_parser("demo", help="align SmolLM2-135M-Instruct toward positive movie reviews (VADER)")
    demo_cli.add_demo_args(demo)
    demo.set_defaults(func=demo_cli.cmd_demo)

    ape = sub.add_parser("ape", help="automatic prompt engineering: instructions induced and selected by the model "
                         "(configs/ape_*.yaml)", epilog_fn=ape_cli.help_epilog,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    ape_cli.add_ape_args(ape)
    ape.set_defaults(func=ape_cli.cmd_ape)
    return p


def _end_progress_bars() -> None:
    """Close open progress bars, so that an ``error:`` line starts on a line of its own."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ()) or ()):
        try:
            bar.close()
        except Exception:  # noqa: BLE001 - cosmetic
            pass


def main(argv=None) -> int:
    from jaxalign.train.signals import exit_on_signal

    # From the first moment: a signal during imports, data loading or compiling ends the command
    # with one line and 128 + the signal (the training loop handles its own first signal).
    with exit_on_signal():
        return _main(argv)


def _trl_options(argv: list[str]) -> list[str]:
    """A training command's (or ``plan``'s) ``--trl_name value`` options as ``trl_name=value``
    overrides, after the other arguments (:func:`jaxalign.config.trl.cli_overrides`)."""
    from jaxalign.algorithms import registry

    if not argv or (argv[0] not in registry.ALGORITHMS and argv[0] != "plan"):
        return argv
    from jaxalign.config.trl import cli_overrides

    rest, extra = cli_overrides(argv[1:])
    return [argv[0], *rest, *extra]


def _main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv = _trl_options(argv)
    except JaxalignError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except JaxalignError as e:
        _end_progress_bars()
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NoSpaceLeft as e:
        _end_progress_bars()
        print(f"error: {e}", file=sys.stderr)
        return NO_SPACE_EXIT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - a full disk or out of memory, each reported in one line
        _end_progress_bars()
        if is_no_space(e):  # a write without its own NoSpaceLeft (config.yaml, plots, export --out)
            where = written_path(e) or getattr(args, "out", None) or getattr(args, "run_dir", None) or "a file"
            print(f"error: {NoSpaceLeft(where, 'free space and rerun')}", file=sys.stderr)
            return NO_SPACE_EXIT
        # TensorStore also says RESOURCE_EXHAUSTED for a full disk, so that is ruled out first.
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        first = " ".join(str(e).split())[:300]
        print(f"error: out of memory ({first}); lower train.micro_batch_size / train.batch_size, the "
              "sequence lengths or the model size", file=sys.stderr)
        return 2

