"""Hugging Face Hub ids (``org/name``, ``org/name@revision``) resolved to a local snapshot.

``huggingface_hub.snapshot_download`` does the resolving: it knows the cache layout
(``models--org--name/snapshots/<commit>``, ``refs/<branch>``), revisions, tokens, mirrors
(``HF_ENDPOINT``) and partial downloads, and a copy fetched by ``hf download`` or by
``transformers`` is found here too. What this module adds is the failure mode: one line, within
seconds, that says what could not be fetched and how to point at a local copy, instead of the
library's multi-line errors and a connection that may wait without a timeout.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

from jaxalign.errors import JaxalignError

# A repo id is "owner/name" (letters, digits, "-", "_", "."); a revision after "@" is a branch,
# tag or commit (git refs may hold "/", never ":" or "@").
_HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<rev>[\w./-]+))?")
# Names that are file paths, never repo ids (a missing file should say so, not ask the Hub).
_FILE_SUFFIXES = (".gguf", ".safetensors", ".json", ".jsonl", ".ndjson", ".parquet", ".csv", ".yaml", ".yml")
# What a model needs: weights, config, tokenizer (and its chat template). No pickles, no GGUFs,
# no other frameworks' copies of the weights.
MODEL_FILES = ["*.safetensors", "*.safetensors.index.json", "*.json", "tokenizer.model", "*.txt", "*.jinja"]
# Seconds to wait for the Hub to answer before using the cache only (the client has no timeout).
PROBE_TIMEOUT_S = 5.0

_TRUE = ("1", "ON", "YES", "TRUE")


def parse_hub_id(name) -> tuple[str, str | None] | None:
    """``(repo_id, revision)`` when ``name`` reads as a Hub id (``org/name`` or
    ``org/name@revision``), else None. Paths that start with ``.``, ``/`` or ``~`` or end in a
    data/model file suffix are never Hub ids."""
    s = str(name).strip()
    if s.startswith((".", "/", "~")) or s.lower().endswith(_FILE_SUFFIXES):
        return None
    m = _HUB_ID.fullmatch(s)
    if m is None or "--" in m["repo"] or ".." in m["repo"] or m["repo"].endswith((".", "-")):
        return None
    return m["repo"], m["rev"]


def offline_variable(repo_type: str = "model") -> str | None:
    """The environment variable that puts the Hub offline for ``repo_type``, read now (the
    libraries read it once, at import): ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``; for
    datasets ``HF_DATASETS_OFFLINE`` when it is set at all (``datasets``' own rule). None: online."""
    env = os.environ
    if repo_type == "dataset" and env.get("HF_DATASETS_OFFLINE") is not None:
        return "HF_DATASETS_OFFLINE" if env["HF_DATASETS_OFFLINE"].upper() in _TRUE else None
    return next((v for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") if env.get(v, "").upper() in _TRUE), None)


def hub_cache_dir() -> str:
    """The Hub cache folder, from the environment now (``HF_HUB_CACHE``, ``HF_HOME``/hub), else
    huggingface_hub's default."""
    env = os.environ
    if env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE"):
        return os.path.expanduser(env.get("HF_HUB_CACHE") or env["HUGGINGFACE_HUB_CACHE"])
    if env.get("HF_HOME"):
        return os.path.join(os.path.expanduser(env["HF_HOME"]), "hub")
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def first_line(e: BaseException) -> str:
    """The first line of ``e``'s message (its type name when empty), at most 200 characters:
    the libraries' multi-line errors, quoted inside one ``error:`` line."""
    s = str(e).strip()
    return (s.splitlines()[0] if s else type(e).__name__)[:200]


def hub_reachable(repo_id: str, revision: str | None, repo_type: str, given: str) -> bool:
    """Ask the Hub about the repo (at most :data:`PROBE_TIMEOUT_S`): False when it cannot be
    reached; a one-line error when it answers that the repo or the revision does not exist."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    what = "dataset" if repo_type == "dataset" else "model"
    try:
        HfApi().repo_info(repo_id, repo_type=repo_type, revision=revision, timeout=PROBE_TIMEOUT_S)
    except RevisionNotFoundError:
        raise JaxalignError(f"{given}: the Hugging Face Hub {what} {repo_id!r} has no revision {revision!r}") from None
    except GatedRepoError:
        raise JaxalignError(f"{given}: the Hugging Face Hub {what} {repo_id!r} is gated: accept its terms on "
                            f"huggingface.co and log in (`hf auth login`), or give a local directory path") from None
    except RepositoryNotFoundError:
        raise JaxalignError(f"{given}: no such file or directory, and the Hugging Face Hub has no {what} "
                            f"{repo_id!r} (or it is private: log in with `hf auth login`)") from None
    except Exception:  # noqa: BLE001 - connection refused, DNS, timeout, proxy, 5xx: use the cache
        return False
    return True


def not_fetched(given: str, repo_id: str, revision: str | None, repo_type: str, reason: str) -> JaxalignError:
    """The one-line error for a Hub id that is neither reachable nor in the local cache."""
    rev = f"@{revision}" if revision else ""
    flag = " --repo-type dataset" if repo_type == "dataset" else ""
    what = "dataset" if repo_type == "dataset" else "model"
    return JaxalignError(
        f"{given}: no such file or directory, and Hugging Face Hub {what} {repo_id + rev!r} could not be fetched "
        f"({reason}) and is not in the local cache ({hub_cache_dir()}); download it where there is network "
        f"(`hf download {repo_id}{flag}`{f' --revision {revision}' if revision else ''}) or give the path of a "
        f"local copy")


def snapshot(repo_id: str, revision: str | None = None, *, repo_type: str = "model",
             allow_patterns: list[str] | None = None, given: str | None = None,
             cache_only: bool = False) -> Path:
    """The local snapshot folder of a Hub repo, downloaded if needed (``allow_patterns`` only).

    Offline (``HF_HUB_OFFLINE=1``), with the Hub unreachable, or with ``cache_only`` (the caller
    found it unreachable), only the cache is used, and a repo that is not there is a one-line
    :class:`JaxalignError` at once. A successful resolution is remembered for the process, so the
    tokenizer and the weights of one run come from one commit.
    """
    var = offline_variable(repo_type)
    offline = f"offline: {var} is set" if var else "the Hub is unreachable" if cache_only else None
    return _snapshot(repo_id, revision, repo_type, tuple(allow_patterns or ()), given or repo_id,
                     offline, hub_cache_dir())


@functools.lru_cache(maxsize=64)
def _snapshot(repo_id, revision, repo_type, patterns, given, offline, cache_dir) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    kw = dict(repo_id=repo_id, revision=revision, repo_type=repo_type, cache_dir=cache_dir,
              allow_patterns=list(patterns) or None)
    reason = offline
    try:
        if reason is None and not hub_reachable(repo_id, revision, repo_type, given):
            reason = "the Hub is unreachable"
        if reason is not None:
            try:
                return Path(snapshot_download(**kw, local_files_only=True))
            except LocalEntryNotFoundError as e:
                if "incomplete" in str(e):
                    reason += "; the cached copy is incomplete"
                raise not_fetched(given, repo_id, revision, repo_type, reason) from None
        _quiet_hub_progress()
        return Path(snapshot_download(**kw))
    except HFValidationError as e:
        raise JaxalignError(f"{given}: not a valid Hugging Face Hub id ({first_line(e)})") from None
    except JaxalignError:
        raise
    except OSError as e:  # a download cut short, a full disk, a permission error in the cache
        raise JaxalignError(f"{given}: cannot fetch {repo_id!r} from the Hugging Face Hub ({first_line(e)})") from None


def _quiet_hub_progress() -> None:
    """Download bars only on a terminal: in a log file they are a flood of carriage returns."""
    import sys

    if not sys.stderr.isatty():
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
