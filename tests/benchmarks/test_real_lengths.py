"""benchmarks/real_lengths.py and real_harness.py (``throughput.py --lengths real``): the length
sampler against the log-normal's closed forms, and the "same examples on every side" property:
packed and padded plans cover every example once, and the batches each side builds from them
hold exactly the examples' tokens. Nothing here loads a model or times anything."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import real_harness as rh  # noqa: E402
import real_lengths as rl  # noqa: E402

from jaxalign.data import collate  # noqa: E402
from jaxalign.algorithms.data_setup import real_tokens  # noqa: E402
from jaxalign.data.packing import collate_packed, unit_length, unpacked_sequences  # noqa: E402


def test_sampler_matches_the_lognormal():
    """log of the lengths ~ N(log median, sigma): sample median and log-std against the closed
    forms (the rounding and the 4-token floor move them by far less than the tolerance)."""
    rng = np.random.default_rng(0)
    for median, sigma in (rl.PROMPT_LOGNORMAL, rl.RESPONSE_LOGNORMAL):
        x = rl.sample_lengths(rng, 20_000, median, sigma)
        assert x.dtype == np.int64 and x.min() >= rl.MIN_TOKENS
        assert np.median(x) == pytest.approx(median, rel=0.04)
        assert np.log(x).std() == pytest.approx(sigma, rel=0.03)
        # long tail: the mean is exp(sigma^2 / 2) times the median
        assert x.mean() == pytest.approx(median * np.exp(sigma**2 / 2), rel=0.05)


@pytest.mark.parametrize("kind", ["sft", "dpo"])
def test_examples_are_cut_to_max_length_and_do_not_depend_on_n(kind):
    length = 512
    ex = rl.make_examples(kind, 40, length, seed=3)
    assert ex[:7] == rl.make_examples(kind, 7, length, seed=3)  # example i is the same for any n
    assert ex != rl.make_examples(kind, 40, length, seed=4)
    for i, e in enumerate(ex):
        lens = rl.example_lengths(kind, i, length, seed=3)
        assert lens[0] <= length // 2
        masks = [e["completion_mask"]] if kind == "sft" else [e["chosen_mask"], e["rejected_mask"]]
        for seq, mask, r in zip(rl.sequences(e), masks, lens[1:]):
            assert len(seq) == lens[0] + r <= length
            assert mask == [0] * lens[0] + [1] * r
        if kind == "dpo":
            assert e["chosen_ids"][:lens[0]] == e["rejected_ids"][:lens[0]]  # a shared prompt
    # some examples are cut (the tail is long), most are not
    cut = sum(len(rl.sequences(e)[0]) == length for e in ex)
    assert 0 < cut < len(ex) // 2


def _sequences_of_packed(batch):
    return [x for row in unpacked_sequences(batch) for x in row]


@pytest.mark.parametrize("kind", ["sft", "dpo"])
def test_packed_and_padded_sides_see_the_same_examples(kind):
    length, rows = 512, 3
    ex = rl.make_examples(kind, 17, length, seed=1)
    want = [s for e in ex for s in rl.sequences(e)]
    packed = rl.plan_steps(ex, rows, length, packed=True)
    padded = rl.plan_steps(ex, rows, length, packed=False)
    # every example exactly once; padded in order, `rows` a step
    assert sorted(i for s in packed for i in rl.step_examples(s, True)) == list(range(17))
    assert [i for s in padded for i in rl.step_examples(s, False)] == list(range(17))
    assert all(len(s) <= rows for s in packed + padded) and len(padded) == 6
    assert len(packed) < len(padded)  # packing needs fewer steps for the same examples
    cap = length * (1 if kind == "sft" else 2)
    got_packed, got_padded, real_p, real_q = [], [], 0, 0
    for step in packed:
        assert all(sum(unit_length(ex[i]) for i in row) <= cap for row in step)
        b = collate_packed(ex, step, pad_id=2, length=cap, max_units=cap // 4 if kind == "dpo" else None)
        got_packed += _sequences_of_packed(b)
        real_p += real_tokens(b)  # a shared prompt counts for both its sequences
        if kind == "dpo":
            assert b["shared_length"].sum() > 0
    for step in padded:
        b = collate([ex[i] for i in step], pad_id=2, buckets="pow2", max_length=length)
        names = ["input_ids"] if kind == "sft" else ["chosen_input_ids", "rejected_input_ids"]
        for r in range(len(step)):
            for name in names:
                m = b[name.replace("input_ids", "attention_mask")][r].astype(bool)
                got_padded.append(b[name][r][m].tolist())
                real_q += int(m.sum())
    key = lambda s: (len(s), s)
    assert sorted(got_packed, key=key) == sorted(want, key=key)
    assert sorted(got_padded, key=key) == sorted(want, key=key)
    assert real_p == real_q == rl.real_tokens(ex)


def test_digest_changes_with_any_token():
    ex = rl.make_examples("sft", 4, 64)
    other = [dict(e) for e in ex]
    other[2] = {**other[2], "input_ids": other[2]["input_ids"][:-1] + [other[2]["input_ids"][-1] + 1]}
    assert rl.digest(ex) == rl.digest(rl.make_examples("sft", 4, 64))
    assert rl.digest(ex) != rl.digest(other)


def _res(side, tps, peak, digest="d", real=100, processed=120):
    return {"kind": "sft", "side": side, "examples": 4, "digest": digest, "real_tokens": real,
            "processed_tokens": processed, "real_tokens_per_s": tps, "time_s": real / tps, "steps": 2,
            "cpu_s": 1.0, "warmup_s": 1.0, "peak_gib": peak, "load_before": 1.0, "load_after": 1.0}


def test_harness_refuses_different_examples_and_computes_goals():
    same = [_res("jaxalign packed", 30.0, 5.0), _res("PyTorch loop", 20.0, 6.0), _res("TRL", 10.0, 4.0)]
    rh.check_same(same)
    with pytest.raises(SystemExit, match="same examples"):
        rh.check_same(same + [_res("jaxalign padded", 25.0, 5.0, digest="other")])
    with pytest.raises(SystemExit, match="real_tokens"):
        rh.check_same(same + [_res("jaxalign padded", 25.0, 5.0, real=99)])
    rows = rh.summarize({"sft": {r["side"]: r for r in same}})
    by = {r["side"]: r for r in rows}
    assert by["PyTorch loop"]["packed_speedup"] == pytest.approx(1.5)
    assert by["TRL"]["packed_speedup"] == pytest.approx(3.0)
    assert by["TRL"]["padding_share"] == pytest.approx(20 / 120)
    (g,) = rh.goals(rows)
    assert g["peer"] == "PyTorch loop" and g["met_speed"] and not g["met_memory"]  # TRL's 4.0 GiB < 5.0


@pytest.mark.parametrize("argv,msg", [(["--only", "rm"], "--only: unknown run 'rm'"),
                                      (["--sides", "jaxalign,TRL"], "--sides: unknown side 'jaxalign'")])
def test_bad_options_are_one_line_errors(argv, msg):
    with pytest.raises(SystemExit, match=msg):
        rh.main(argv)


def test_digest_ignores_order_but_not_a_missing_or_repeated_example():
    ex = rl.make_examples("sft", 5, 64)
    assert rl.digest(ex[::-1]) == rl.digest(ex)  # a packed side feeds them first-fit, not in order
    assert rl.digest(ex[:-1]) != rl.digest(ex)
    assert rl.digest(ex[:-1] + ex[:1]) != rl.digest(ex)


@pytest.mark.parametrize("kind", ["sft", "dpo"])
def test_trl_sides_train_in_float32(kind, tmp_path):
    """TRL's configs default to bf16=True (CPU autocast to bfloat16); the harness compares float32
    sides, so its TRL configs must turn mixed precision off."""
    pytest.importorskip("torch")
    pytest.importorskip("trl")
    import real_sides as rs

    cfg = rs.trl_config(kind, {"rows": 4, "remat": True, "max_length": 512}, str(tmp_path), 3)
    assert cfg.bf16 is False and cfg.fp16 is False
    assert cfg.per_device_train_batch_size == 4 and cfg.max_steps == 3 and cfg.gradient_checkpointing
