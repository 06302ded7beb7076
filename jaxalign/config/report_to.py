"""``train.report_to``: which experiment trackers a run logs to, checked when the config is
loaded. Each named backend's package must be installed; this is checked without importing it
(``importlib.util.find_spec``), so the check is cheap and a missing tracker is a one-line error
before any data or model is loaded. The trackers themselves: :mod:`jaxalign.train.report`."""

from __future__ import annotations

import importlib.util

from jaxalign.errors import JaxalignError, short

KEY = "train.report_to"
# backend -> the module it needs. TensorBoard goes through tensorboardX, a jaxalign dependency
# (a maintained writer of TensorBoard event files without TensorFlow); the others are the
# optional extra ``jaxalign[tracking]``.
BACKENDS = {"tensorboard": "tensorboardX", "wandb": "wandb", "trackio": "trackio", "mlflow": "mlflow"}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or half-removed install
        return False


def parse_report_to(value) -> tuple[str, ...]:
    """The backends ``train.report_to`` names, in order, each once (``"none"`` or ``[]``: none).

    A one-line error names the key for an unknown backend, ``none`` mixed with others, or a
    backend whose package is not installed (with the pip command that installs it).
    """
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)):
        raise JaxalignError(f"config key {KEY!r}: expected a backend name or a list of them, got {short(value)}")
    out: list[str] = []
    for name in names:
        if not isinstance(name, str) or (name not in BACKENDS and name != "none"):
            raise JaxalignError(f"config key {KEY!r}: {short(name)} is not one of "
                                f"{', '.join([*BACKENDS, 'none'])}")
        if name not in out:
            out.append(name)
    if "none" in out:
        if len(out) > 1:
            raise JaxalignError(f"config key {KEY!r}: 'none' cannot be combined with "
                                f"{', '.join(n for n in out if n != 'none')}")
        return ()
    for name in out:
        module = BACKENDS[name]
        if _installed(module):
            continue
        if name == "tensorboard":
            raise JaxalignError(f"config key {KEY!r}: tensorboard needs tensorboardX, which is not installed "
                                "(a jaxalign dependency): pip install tensorboardX, or set train.report_to=none")
        raise JaxalignError(f"config key {KEY!r}: {name} is not installed: pip install 'jaxalign[tracking]' "
                            f"(or pip install {module})")
    return tuple(out)
