"""Named datasets: a dataset directory or a Hugging Face Hub dataset, one split of one subset.

``datasets.load_dataset`` does the resolving (the README's ``configs:``, split names inferred from
file names, the Hub's files and revisions); this module picks the split and subset and turns its
errors into one line: an unknown split or subset lists the ones there are. A Hub dataset is read
from the Hub when it answers, and otherwise (``HF_HUB_OFFLINE=1``, no network) from the snapshot
in the local Hub cache, loaded as a dataset directory, with no retries.
"""

from __future__ import annotations

import ast
import re

from jaxalign.errors import JaxalignError
from jaxalign.io.hub import first_line

_LISTED = re.compile(r"\[([^\[\]]*)\]")


def _listed(msg: str) -> str | None:
    """The names in the ``[...]`` list of a ``datasets`` error message, comma-separated."""
    m = _LISTED.search(msg)
    if not m:
        return None
    try:
        names = ast.literal_eval(f"[{m[1]}]")
    except (ValueError, SyntaxError):
        return None
    return ", ".join(map(str, names))


def load_split(path: str, split: str, subset: str | None, given: str, **kw):
    """``datasets.load_dataset(path, subset, split=split)`` with one-line errors naming ``given``:
    an unknown split or subset lists the available ones."""
    import datasets

    try:
        return datasets.load_dataset(path, name=subset, split=split, **kw)
    except ValueError as e:
        msg = str(e)
        names = _listed(msg)
        if msg.startswith("Unknown split") and names:
            raise JaxalignError(f"{given}: no split {split!r} (available splits: {names}); "
                                f"name one as {given}:SPLIT") from None
        if "BuilderConfig" in msg and "not found" in msg and names:
            raise JaxalignError(f"config key 'data.subset': {given} has no subset {subset!r} "
                                f"(available subsets: {names})") from None
        if msg.startswith("Config name is missing") and names:
            raise JaxalignError(f"config key 'data.subset': {given} has several subsets ({names}); "
                                "choose one with data.subset") from None
        raise JaxalignError(f"{given}: cannot load the dataset ({first_line(e)})") from None


def hub_rows(given: str, repo_id: str, revision: str | None, split: str, subset: str | None,
             cache_dir: str | None = None):
    """Rows of one split of a Hub dataset (a ``datasets.Dataset``), from the Hub or from the cache."""
    from jaxalign.io.hub import hub_reachable, not_fetched, offline_variable, snapshot

    if offline_variable("dataset") is None and hub_reachable(repo_id, revision, "dataset", given):
        try:
            return load_split(repo_id, split, subset, given, revision=revision, cache_dir=cache_dir)
        except JaxalignError:
            raise
        except ConnectionError as e:  # reachable a moment ago; gone now
            raise not_fetched(given, repo_id, revision, "dataset", first_line(e)) from None
    local = snapshot(repo_id, revision, repo_type="dataset", given=given, cache_only=True)
    return load_split(str(local), split, subset, given, cache_dir=cache_dir)
