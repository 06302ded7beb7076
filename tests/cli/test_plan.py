"""`jaxalign plan`: the per-device memory of the tiny SFT run's train step, checked against the
model's architecture (parameter bytes by hand from its shapes and the FSDP sharding rules) and
against XLA's own argument count; a limit it exceeds is exit 2 with one `error:` line that
agrees with the table, and nothing is written."""

from __future__ import annotations

import json

import pytest

from jaxalign.cli import main
from jaxalign.train.preflight import fmt_bytes

CONFIG = "configs/sft_tiny.yaml"
FIXED = ["data.buckets=[128]"]  # one padded length: the batch is [8, 128]


def tiny_param_bytes_per_device(vocab=260, h=64, inter=128, layers=2, kv_dim=32, fsdp=8) -> int:
    """configs/sft_tiny.yaml's model: every matrix has an `embed` (hidden) dim that mesh.fsdp
    (all 8 devices) splits; the norms are replicated; embeddings are tied (no lm_head)."""
    per_layer = h * h + 2 * kv_dim * h + h * h + 3 * inter * h  # q, k, v, o, gate/up/down
    matrices = vocab * h + layers * per_layer
    norms = layers * 2 * h + h
    return matrices * 4 // fsdp + norms * 4


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plan")
    # capsys is function-scoped: read stdout through a file instead.
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["plan", "--config", CONFIG, "--json", f"run_dir={tmp / 'never'}", *FIXED])
    assert rc == 0
    assert not (tmp / "never").exists()
    return json.loads(buf.getvalue().strip().splitlines()[-1])


def test_plan_reports_the_step_memory(planned):
    est = planned
    params = tiny_param_bytes_per_device()
    assert est["params"] == params
    # AdamW's two moments per parameter, plus a few int32 step counters (replicated).
    assert 0 < est["opt_state"] - 2 * params <= 64
    assert est["batch_shapes"] == {k: [8, 128] for k in ("input_ids", "attention_mask", "completion_mask")}
    assert est["batch"] == 3 * 8 * 128 * 4 // 8
    # XLA's count of the compiled step's arguments equals the parts counted from the shapes.
    assert est["arguments"] == est["params"] + est["opt_state"] + est["other_state"] + est["batch"]
    assert est["total"] == est["arguments"] + est["outputs"] - est["aliased"] + est["temp"] + est["code"]
    # The logits alone ([8, 128, 260] f32 over 8 devices) are temporaries of the step.
    assert est["temp"] >= 128 * 260 * 4
    assert est["limit"] is None and est["fits"] is True


def test_plan_over_the_limit_is_one_error_line_and_writes_nothing(planned, capsys, tmp_path):
    total = planned["total"]
    rc = main(["plan", "--config", CONFIG, f"run_dir={tmp_path / 'never'}", *FIXED,
               f"train.device_memory_limit={total - 1}"])
    out, err = capsys.readouterr()
    err = [l for l in err.splitlines() if l.strip() and not l.startswith("data.")]
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: the run needs about {fmt_bytes(total)} per device at its peak (train step) "
                             f"but {fmt_bytes(total - 1)} is available (train.device_memory_limit); largest part: ")
    assert "; to fit: " in err[0] and "data.max_length (now 128)" in err[0] and "sft.chunk_size" in err[0]
    assert "peak (resident + train step)" in out and fmt_bytes(total) in out
    assert "does NOT fit (1 B over)" in out
    assert not (tmp_path / "never").exists()


def test_plan_sees_the_packed_shape(tmp_path):
    """With data.packing the step is planned on batch_size packed rows of data.max_length tokens
    with their segment ids."""
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["plan", "--config", CONFIG, "--json", f"run_dir={tmp_path / 'never'}", "data.packing=true",
                   "train.batch_size=4"])
    assert rc == 0
    est = json.loads(buf.getvalue().strip().splitlines()[-1])
    assert est["batch_shapes"] == {k: [4, 128] for k in ("input_ids", "attention_mask", "completion_mask",
                                                         "segment_ids")}
