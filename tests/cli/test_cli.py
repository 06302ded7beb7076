"""The CLI: info/export work, and bad input is one `error:` line with exit code 2."""

import json
import sys

import numpy as np
import pytest

from tests.models.hf_fixtures import make_hf_model
from tests import procenv
from tests.procenv import subprocess_env


def run_cli(*args):
    proc = procenv.run([sys.executable, "-m", "jaxalign.cli", *map(str, args)], timeout=300,
                       env=subprocess_env())
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    make_hf_model("qwen2", d)
    return d


def assert_one_line_error(rc, err, *needles):
    assert rc == 2, err
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], lines[0]


def test_info_reports_sizes(tiny_dir):
    rc, out, err = run_cli("info", "--model", tiny_dir, "--json")
    assert rc == 0, err
    info = json.loads(out)
    assert info["architecture"] == "Qwen2ForCausalLM"
    assert info["layers"] == 3 and info["hidden_size"] == 32 and info["kv_heads"] == 2
    # Independent count: transformers' own parameter count of the same checkpoint.
    torch = pytest.importorskip("torch")
    import transformers
    ref = transformers.AutoModelForCausalLM.from_pretrained(tiny_dir)
    assert info["parameters"] == sum(p.numel() for p in ref.parameters())


def test_export_round_trip(tiny_dir, tmp_path):
    rc, out, err = run_cli("export", "--model", tiny_dir, "--out", tmp_path / "out")
    assert rc == 0, err
    from safetensors.numpy import load_file
    a = load_file(tiny_dir / "model.safetensors")
    b = load_file(tmp_path / "out" / "model.safetensors")
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_dir_without_config(tmp_path):
    rc, _, err = run_cli("info", "--model", tmp_path)
    assert_one_line_error(rc, err, "config.json")


def test_missing_path(tmp_path):
    rc, _, err = run_cli("info", "--model", tmp_path / "nope")
    assert_one_line_error(rc, err, "nope")


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"],
                                                      "model_type": "gpt2"}))
    rc, _, err = run_cli("info", "--model", tmp_path)
    assert_one_line_error(rc, err, "GPT2LMHeadModel", "unsupported architecture")


def test_truncated_safetensors(tiny_dir, tmp_path):
    (tmp_path / "config.json").write_bytes((tiny_dir / "config.json").read_bytes())
    data = (tiny_dir / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    rc, _, err = run_cli("info", "--model", tmp_path)
    assert_one_line_error(rc, err, "model.safetensors")


def test_missing_tensor_is_named(tiny_dir, tmp_path):
    from safetensors.numpy import load_file, save_file
    (tmp_path / "config.json").write_bytes((tiny_dir / "config.json").read_bytes())
    t = load_file(tiny_dir / "model.safetensors")
    del t["model.layers.1.mlp.up_proj.weight"]
    save_file(t, tmp_path / "model.safetensors", metadata={"format": "pt"})
    rc, _, err = run_cli("info", "--model", tmp_path)
    assert_one_line_error(rc, err, "model.layers.1.mlp.up_proj.weight")


def test_unsupported_gguf_architecture(tmp_path):
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "bad.gguf"
    w = gguf.GGUFWriter(str(path), "gpt2")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    rc, _, err = run_cli("info", "--model", path)
    assert_one_line_error(rc, err, "gpt2")


_FULL_DISK = ('RESOURCE_EXHAUSTED: Error writing "w/0" in OCDBT database at local file "/r/checkpoints/2.orbax-'
              'checkpoint-tmp/state/": Failed to write 52 bytes to file 15: No space left on device')


@pytest.mark.parametrize("exc, code, line", [
    (ValueError(_FULL_DISK), 28, 'error: no space left on device while writing /r/checkpoints/2.orbax-checkpoint-'
                                 'tmp/state/ (free space and rerun)'),
    (OSError(28, "No space left on device", "/r/plots/training.png"), 28,
     "error: no space left on device while writing /r/plots/training.png (free space and rerun)"),
    (RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 4.0GiB"), 2,
     "error: out of memory (RESOURCE_EXHAUSTED: Out of memory while trying to allocate 4.0GiB); lower "
     "train.micro_batch_size / train.batch_size, the sequence lengths or the model size"),
], ids=["tensorstore-disk-full", "oserror-disk-full", "out-of-memory"])
def test_a_full_disk_is_not_reported_as_out_of_memory(monkeypatch, capsys, exc, code, line):
    """Both say RESOURCE_EXHAUSTED in TensorStore's words; a full disk has its own exit code."""
    from jaxalign import cli

    def fail(args):
        raise exc

    monkeypatch.setattr(cli.model, "cmd_info", fail)
    assert cli.main(["info", "--model", "unused"]) == code
    assert capsys.readouterr().err == line + "\n"
