"""Where a run writes: inside its run directory, and nowhere else.

The rule:

- The run directory (``--run-dir`` / config key ``run_dir``) is the one output location a user
  chooses. It may be anywhere, and may itself be a symlink (e.g. onto a scratch disk).
- Everything a run writes has a fixed relative name inside it: ``config.yaml``,
  ``metrics.jsonl``, ``checkpoints/``, ``plots/``, ``tensorboard/``, ``final/`` (and the demo's
  files). A config key that names an output location (a dataclass field with
  ``metadata={"output_path": True}``) must be a relative path without ``..``, and lands inside
  the run directory too.
- Before a run writes anything, :func:`check_run_dir` refuses a run directory in which
  something is a symlink leading outside it (``final -> /home/me``): writes, and the deletion
  of old checkpoints, would otherwise follow the link out.

Reading is unrestricted: data files, models and tokenizers may be anywhere.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePath

from jaxalign.algorithms.registry import section_of
from jaxalign.errors import JaxalignError

# The top-level names a training run (and ``jaxalign demo``) writes inside its run directory.
RUN_OUTPUTS = ("config.yaml", "metrics.jsonl", "checkpoints", "plots", "tensorboard", "final",
               "demo_config.yaml", "demo_summary.json", "data", "heldout_samples.npz",
               "ape_config.yaml", "ape_results.json", "ape_results.md")


def _label(key: str) -> str:
    return f"option {key!r}" if key.startswith("--") else f"config key {key!r}"


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def check_run_dir(run_dir, key: str = "run_dir") -> Path:
    """``run_dir`` as a Path, after checking that writing inside it stays inside it.

    Refused, with a one-line error naming ``key``: an empty path; a run directory that exists
    but is not a directory (or sits under a file); a symlink among the names a run writes
    (:data:`RUN_OUTPUTS`, or anywhere below them) that resolves outside the run directory.
    Nothing is created or changed.
    """
    if run_dir is None or str(run_dir).strip() == "":
        raise JaxalignError(f"{_label(key)}: an empty path")
    run_dir = Path(run_dir).expanduser()
    for parent in [run_dir, *run_dir.parents]:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                what = "is" if parent == run_dir else f"is under {parent}, which is"
                raise JaxalignError(f"{_label(key)}: {run_dir} {what} not a directory")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise JaxalignError(f"{_label(key)}: cannot write in {parent} (permission denied)")
            break
    if not run_dir.is_dir():
        return run_dir
    root = run_dir.resolve()

    def refuse(p: Path):
        raise JaxalignError(f"{_label(key)}: {p} is a symlink to {os.readlink(p)}, outside the run directory; "
                            "jaxalign writes only inside the run directory (remove the link, or symlink "
                            "the whole run directory instead)")

    names = list(RUN_OUTPUTS) + [p.name for p in run_dir.glob(".*.tmp*")] + ["metrics.jsonl.tmp"]
    for name in names:
        top = run_dir / name
        if top.is_symlink():
            if not _inside(top.resolve(), root):
                refuse(top)
            continue
        if not top.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
            for entry in dirnames + filenames:
                p = Path(dirpath) / entry
                if p.is_symlink() and not _inside(p.resolve(), root):
                    refuse(p)
    return run_dir


def output_path(run_dir, value, key: str) -> Path:
    """The location inside ``run_dir`` that config key ``key`` names with ``value``.

    ``value`` must be a non-empty relative path without ``..`` components; the result, with the
    symlinks that already exist resolved, must lie inside ``run_dir``. Otherwise a one-line
    error names the key.
    """
    if not isinstance(value, (str, os.PathLike)) or str(value).strip() == "":
        raise JaxalignError(f"config key {key!r}: expected a relative path inside the run directory, got {value!r}")
    rel = PurePath(value)
    if rel.is_absolute() or str(value).startswith("~"):
        raise JaxalignError(f"config key {key!r}: {value} is absolute; outputs go inside the run directory, "
                            "so give a path relative to it")
    if ".." in rel.parts:
        raise JaxalignError(f"config key {key!r}: {value} contains '..'; outputs stay inside the run directory")
    run_dir = Path(run_dir)
    out = run_dir / rel
    if not _inside(out.resolve(), run_dir.resolve()):
        raise JaxalignError(f"config key {key!r}: {value} leads outside the run directory {run_dir} "
                            "(through a symlink)")
    return out


def check_output_keys(cfg, run_dir) -> None:
    """Check every config value whose dataclass field is marked ``metadata={"output_path": True}``
    (in the shared sections and the algorithm's own) with :func:`output_path`."""
    import dataclasses

    def walk(node, prefix):
        for f in dataclasses.fields(node):
            value = getattr(node, f.name, None)
            name = section_of(cfg.algorithm) if (node is cfg and f.name == "algo") else f.name
            key = f"{prefix}{name}"
            if f.metadata.get("output_path") and value is not None:
                output_path(run_dir, value, key)
            elif dataclasses.is_dataclass(value) and not isinstance(value, type):
                walk(value, key + ".")

    walk(cfg, "")
