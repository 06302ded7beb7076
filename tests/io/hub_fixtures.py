"""A fake Hugging Face Hub cache: repos laid out as huggingface_hub lays them out, and a tiny model.

``<cache>/models--org--name/blobs/<sha256>`` holds each file once; ``snapshots/<commit>/<path>``
are relative symlinks to the blobs; ``refs/<branch or tag>`` holds the commit hash. The tests set
``HF_HUB_CACHE`` to ``<cache>`` and ``HF_HUB_OFFLINE=1``, so nothing touches the network.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest


def add_repo(cache: Path, repo_id: str, files: Path, *, repo_type: str = "model",
             refs: tuple[str, ...] = ("main",)) -> str:
    """Put every file under ``files`` into ``cache`` as one commit of ``repo_id``; point ``refs``
    at it. Returns the commit hash."""
    paths = sorted(p for p in Path(files).rglob("*") if p.is_file())
    digest = hashlib.sha1(repo_id.encode())
    for p in paths:
        digest.update(str(p.relative_to(files)).encode() + p.read_bytes())
    commit = digest.hexdigest()
    repo = Path(cache) / "--".join([f"{repo_type}s", *repo_id.split("/")])
    for p in paths:
        data = p.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / p.relative_to(files)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    for ref in refs:
        (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return commit


def tiny_model_dir(d: Path, seed: int = 0) -> Path:
    """A tiny Llama HF directory written by jaxalign (260-token vocabulary) with the shipped
    byte-level tokenizer's files."""
    from jaxalign import init_model, save_model
    from jaxalign.data import tiny_tokenizer_path
    from jaxalign.models.config import ModelConfig

    cfg = ModelConfig(vocab_size=260, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, eos_token_id=2, pad_token_id=3)
    save_model(init_model(cfg, seed=seed), d)
    for f in tiny_tokenizer_path().iterdir():
        shutil.copy(str(f), d / f.name)
    return d


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty fake Hub cache, with the environment pointing at it and offline mode on."""
    from jaxalign.io import hub

    cache = tmp_path / "hf_home" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(cache.parent))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for other in ("HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(other, raising=False)
    hub._snapshot.cache_clear()
    yield cache
    hub._snapshot.cache_clear()
