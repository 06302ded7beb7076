"""Start-up stays light: building the parser, ``--help``, ``--version`` and loading (and
rejecting) a config import no JAX, Flax, transformers or torch. A module-set check, never a
timing: what is imported is what costs the seconds."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests import procenv

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("jax", "flax", "transformers", "torch", "optax", "orbax", "datasets")


def _heavy_after(code: str) -> tuple[list, str]:
    """Run ``code`` in a fresh interpreter; the heavy modules it left imported, and its stdout."""
    probe = code + f"\nimport sys as _s, json as _j\nprint(_j.dumps([m for m in {HEAVY!r} if m in _s.modules]))\n"
    proc = procenv.run([sys.executable, "-c", probe], cwd=ROOT, timeout=300, env=procenv.subprocess_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    return json.loads(lines[-1]), "\n".join(lines[:-1])


def test_building_the_parser_and_every_help_imports_nothing_heavy():
    code = """
import contextlib, io
import jaxalign.cli
from jaxalign.algorithms import registry
p = jaxalign.cli.build_parser()
for argv in [["--help"], ["--version"], ["plan", "--help"]] + [[a, "--help"] for a in registry.names()]:
    with contextlib.redirect_stdout(io.StringIO()) as out:
        try:
            p.parse_args(argv)
        except SystemExit as e:
            assert e.code == 0, (argv, e.code)
    assert out.getvalue(), argv
print("ok")
"""
    heavy, out = _heavy_after(code)
    assert out == "ok" and heavy == [], heavy


def test_loading_every_config_and_an_unknown_key_import_nothing_heavy(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: 1.0e-4\nper_device_train_batch_size: 4\noptim:\n  learning_rat: 1\n")
    code = f"""
from pathlib import Path
from jaxalign.config import load_config
from jaxalign.errors import JaxalignError
from jaxalign.ape.config import load_ape_config
for path in sorted(Path("configs").glob("*.yaml")):
    (load_ape_config if path.name.startswith("ape_") else load_config)(str(path))
try:
    load_config({str(bad)!r}, [], algorithm="dpo", note=lambda m: None)
except JaxalignError as e:
    print(str(e).split(":")[0])
"""
    heavy, out = _heavy_after(code)
    assert out == "2 unknown config keys" and heavy == [], (out, heavy)


def test_the_cli_answers_a_config_error_before_importing_the_training_code(tmp_path):
    """Through ``main``: the error line comes, and the training loop was never imported."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  init: random\npush_to_hub: true\n")
    code = f"""
import contextlib, io, sys
from jaxalign.cli import main
err = io.StringIO()
with contextlib.redirect_stderr(err):
    rc = main(["sft", "--config", {str(bad)!r}])
assert rc == 2, rc
print(err.getvalue().strip())
print("jaxalign.train.loop" in sys.modules)
"""
    heavy, out = _heavy_after(code)
    line, loop = out.splitlines()
    assert line.startswith("error: unknown config key 'push_to_hub'") and loop == "False", out
    assert heavy == [], heavy


def test_version_prints_the_package_version():
    proc = procenv.run([sys.executable, "-m", "jaxalign.cli", "--version"], cwd=ROOT, timeout=300,
                       env=procenv.subprocess_env())
    import jaxalign

    assert proc.returncode == 0 and proc.stdout.strip() == f"jaxalign {jaxalign.__version__}", proc


@pytest.mark.parametrize("argv, needle", [
    (["dpo", "--help"], "dpo.beta = 0.1"),
    (["sft", "--help"], "optim.lr = 1e-05"),
])
def test_a_training_command_help_lists_its_config_keys(capsys, argv, needle):
    from jaxalign.cli import build_parser

    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert needle in out and "config keys" in out and "--learning_rate 1e-4" in out


def test_trl_options_reach_the_config_through_main(capsys):
    """``--learning_rate 1e-4`` is read as optim.lr (a note); a TRL option with another meaning is
    one error line, exit 2; neither gets as far as training (train.steps=0 stops the first)."""
    from jaxalign.cli import main

    rc = main(["sft", "--config", "configs/sft_tiny.yaml", "--learning_rate", "1e-4", "--quiet", "train.steps=0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == ["note: 'learning_rate' is TRL's name; read as optim.lr",
                               "error: config key 'train.steps': must be > 0, got 0"], err
    rc = main(["sft", "--config", "configs/sft_tiny.yaml", "--per_device_train_batch_size=4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith(
        "error: config key 'per_device_train_batch_size': TRL's name; not the same as jaxalign's train.batch_size"), err
    rc = main(["sft", "--learning_rate"])
    assert rc == 2 and capsys.readouterr().err.startswith("error: --learning_rate: expected a value")
