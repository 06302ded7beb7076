"""Hub model ids (``org/name``, ``org/name@revision``) resolve through the local Hub cache to the
same model as the directory they were made from; a local path wins; a missing id is one line, fast."""

from __future__ import annotations

import time

import flax.nnx as nnx
import jax
import numpy as np
import pytest

from jaxalign.errors import JaxalignError
from jaxalign.io.hub import parse_hub_id
from tests.io.hub_fixtures import add_repo, hub_cache, tiny_model_dir  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("tiny_lm"))


@pytest.fixture
def cached(hub_cache, tiny):
    """``tiny-org/tiny-lm`` in the fake cache: main and tag v1 -> one commit."""
    commit = add_repo(hub_cache, "tiny-org/tiny-lm", tiny, refs=("main", "v1"))
    return hub_cache, commit


def params_of(model) -> dict:
    return {str(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))}


def assert_same_params(a, b):
    pa, pb = params_of(a), params_of(b)
    assert pa.keys() == pb.keys() and pa
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)


@pytest.mark.parametrize("name, want", [
    ("org/name", ("org/name", None)),
    ("HuggingFaceTB/SmolLM2-135M-Instruct@main", ("HuggingFaceTB/SmolLM2-135M-Instruct", "main")),
    ("org/model.v2@refs/pr/1", ("org/model.v2", "refs/pr/1")),
    ("org/name@" + "a" * 40, ("org/name", "a" * 40)),
    ("./org/name", None), ("/abs/dir", None), ("~/x/y", None), ("runs/final/model", None),
    ("org/model.gguf", None), ("data/train.jsonl", None), ("smollm2-135m-instruct", None),
    ("org--x/name", None), ("org/na..me", None), ("org/name@", None),
])
def test_parse_hub_id(name, want):
    assert parse_hub_id(name) == want


def test_org_name_and_revisions_load_the_local_model(cached, tiny):
    from jaxalign.io.load import load_model
    from jaxalign.io.paths import resolve_model_path

    cache, commit = cached
    local = load_model(tiny)
    for name in ("tiny-org/tiny-lm", "tiny-org/tiny-lm@v1", f"tiny-org/tiny-lm@{commit}"):
        path = resolve_model_path(name)
        assert path == cache / "models--tiny-org--tiny-lm" / "snapshots" / commit, name
        assert_same_params(load_model(name), local)


def test_hub_tokenizer_and_reward_loader_resolve_too(cached, tiny):
    from jaxalign.io.hf import load_hf
    from jaxalign.io.load import load_tokenizer

    assert load_tokenizer("tiny-org/tiny-lm")("hello")["input_ids"] == load_tokenizer(tiny)("hello")["input_ids"]
    # load_hf (reward models, critics) takes ids as well.
    assert_same_params(load_hf("tiny-org/tiny-lm"), load_hf(tiny))


def test_an_existing_local_path_wins_over_a_hub_id(cached, tiny, tmp_path, monkeypatch):
    from jaxalign.io.load import load_model

    other = tiny_model_dir(tmp_path / "work" / "tiny-org" / "tiny-lm", seed=1)
    monkeypatch.chdir(tmp_path / "work")
    assert_same_params(load_model("tiny-org/tiny-lm"), load_model(other))
    with pytest.raises(AssertionError):
        assert_same_params(load_model("tiny-org/tiny-lm"), load_model(tiny))


def one_line(err: JaxalignError) -> str:
    msg = str(err)
    assert "\n" not in msg, msg
    return msg


def test_a_missing_id_offline_is_one_line_at_once(hub_cache):
    from jaxalign.io.load import load_model

    t = time.monotonic()
    with pytest.raises(JaxalignError) as e:
        load_model("nobody/nothing")
    assert time.monotonic() - t < 5
    msg = one_line(e.value)
    assert msg.startswith("nobody/nothing: no such file or directory, and Hugging Face Hub model 'nobody/nothing' "
                          "could not be fetched (offline: HF_HUB_OFFLINE is set)"), msg
    assert str(hub_cache) in msg and "`hf download nobody/nothing`" in msg and "local copy" in msg


def test_an_unknown_revision_offline_names_it(cached):
    from jaxalign.io.load import load_model

    with pytest.raises(JaxalignError) as e:
        load_model("tiny-org/tiny-lm@v9")
    msg = one_line(e.value)
    assert "'tiny-org/tiny-lm@v9' could not be fetched" in msg and "--revision v9" in msg, msg


def test_an_unreachable_hub_falls_back_to_the_cache_fast(cached, tiny, monkeypatch):
    """Not offline, but the Hub does not answer (a closed local port): the cached copy loads, and a
    repo that is not cached is one line, without retries."""
    from huggingface_hub import constants

    from jaxalign.io.load import load_model

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    assert_same_params(load_model("tiny-org/tiny-lm"), load_model(tiny))
    t = time.monotonic()
    with pytest.raises(JaxalignError) as e:
        load_model("nobody/nothing")
    assert time.monotonic() - t < 10
    assert "could not be fetched (the Hub is unreachable)" in one_line(e.value)


def test_a_missing_plain_path_still_says_no_such_file(tmp_path, hub_cache):
    from jaxalign.io.load import load_model

    with pytest.raises(JaxalignError, match=r"/no-such-model: no such file or directory$"):
        load_model(tmp_path / "no-such-model")
