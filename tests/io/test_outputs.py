"""Outputs stay inside the run directory: jaxalign.io.outputs and what the CLI does with it."""

from __future__ import annotations

import dataclasses
import os

import pytest

from jaxalign.algorithms.registry import ALGORITHMS, register
from jaxalign.config import load_config
from jaxalign.errors import JaxalignError
from jaxalign.io.outputs import RUN_OUTPUTS, check_output_keys, check_run_dir, output_path
from tests.fuzz_helpers import cli_error_line, one_error_line, tree_digest


def test_a_fresh_or_clean_run_dir_is_fine_and_nothing_is_created(tmp_path):
    assert check_run_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists()
    run = tmp_path / "run"
    (run / "checkpoints" / "5").mkdir(parents=True)
    (run / "inside").mkdir()
    (run / "final").symlink_to(run / "inside")  # a link that stays inside is fine
    (run / "mine").symlink_to("/")  # not a name jaxalign writes: not its business
    before = tree_digest(run)
    assert check_run_dir(run) == run and tree_digest(run) == before
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (tmp_path / "linked").symlink_to(scratch)  # the run dir itself may be a link (another disk)
    assert check_run_dir(tmp_path / "linked") == tmp_path / "linked"


@pytest.mark.parametrize("where", ["final", "metrics.jsonl", "plots", "checkpoints/10", "checkpoints/10/state",
                                   ".final.tmp-123"])
def test_a_symlink_leading_outside_is_refused(tmp_path, where):
    run, outside = tmp_path / "run", tmp_path / "outside"
    outside.mkdir()
    link = run / where
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(outside)
    with pytest.raises(JaxalignError) as e:
        check_run_dir(run, "--run-dir")
    one_error_line(e.value, f"option '--run-dir': {link} is a symlink to {outside}, outside the run directory")


def test_a_run_dir_that_is_a_file_or_under_one_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(JaxalignError, match=r"^config key 'run_dir': .*/file is not a directory$"):
        check_run_dir(f)
    with pytest.raises(JaxalignError, match=r"is under .*/file, which is not a directory$"):
        check_run_dir(f / "run")
    with pytest.raises(JaxalignError, match="an empty path"):
        check_run_dir("")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_run_dir_that_cannot_be_written_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(JaxalignError, match="permission denied"):
            check_run_dir(ro / "run")
    finally:
        ro.chmod(0o700)


@pytest.mark.parametrize("value, why", [
    ("../elsewhere", "contains '..'"), ("a/../../b", "contains '..'"), ("/tmp/x", "is absolute"),
    ("~/x", "is absolute"), ("", "expected a relative path"), ("escape/x", "leads outside the run directory"),
])
def test_output_path_rules(tmp_path, value, why):
    run = tmp_path / "run"
    run.mkdir()
    (run / "escape").symlink_to(tmp_path)
    with pytest.raises(JaxalignError) as e:
        output_path(run, value, "x.out")
    one_error_line(e.value, f"config key 'x.out': ")
    assert why in str(e.value)
    assert output_path(run, "exports/best", "x.out") == run / "exports" / "best"


@dataclasses.dataclass
class _WithOutput:
    export_dir: str | None = dataclasses.field(default=None, metadata={"output_path": True})



@pytest.fixture(autouse=True, scope="module")
def _registered():
    """The test algorithm is in the registry for this module's tests only."""
    register("_outtest", _WithOutput)
    yield
    ALGORITHMS.pop("_outtest", None)


def test_config_keys_marked_as_outputs_are_confined(tmp_path):
    """The mechanism for a config key naming an output: mark its field, and it is checked."""
    run = tmp_path / "run"
    ok = load_config(None, ["_outtest.export_dir=best"], algorithm="_outtest")
    check_output_keys(ok, run)
    for bad in ("../best", "/abs"):
        cfg = load_config(None, [f"_outtest.export_dir={bad}"], algorithm="_outtest")
        with pytest.raises(JaxalignError, match=r"^config key '_outtest\.export_dir': "):
            check_output_keys(cfg, run)


def test_cli_refuses_a_run_dir_with_an_outward_link_before_loading_anything(tmp_path, capsys):
    from jaxalign.cli import main

    run, outside = tmp_path / "run", tmp_path / "home"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep")
    run.mkdir()
    (run / "final").symlink_to(outside)
    before, before_out = tree_digest(run), tree_digest(outside)
    rc = main(["sft", "--config", "configs/sft_tiny.yaml", "--run-dir", str(run), "--quiet", "train.steps=1"])
    line = cli_error_line(capsys, rc)
    assert line.startswith(f"error: option '--run-dir': {run / 'final'} is a symlink to {outside}"), line
    assert tree_digest(run) == before and tree_digest(outside) == before_out
    (tmp_path / "file").write_text("x")
    rc = main(["sft", "--config", "configs/sft_tiny.yaml", "--run-dir", str(tmp_path / "file"), "--quiet"])
    assert "is not a directory" in cli_error_line(capsys, rc)


@pytest.mark.slow
def test_a_run_writes_only_inside_its_run_dir(tmp_path, capsys, monkeypatch):
    """Every file a (1-step, checkpointed, plotted, exported) run writes is under RUN_OUTPUTS in
    its run dir; nothing appears in the working directory or next to the run dir."""
    from pathlib import Path

    from jaxalign.cli import main

    repo = Path(__file__).resolve().parents[2]
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    run = tmp_path / "run"
    rc = main(["sft", "--config", str(repo / "configs/sft_tiny.yaml"), "--run-dir", str(run), "--quiet",
               "train.steps=1", "train.eval_every=0", "data.eval_fraction=0", "data.buckets=[128]",
               "model.config={hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 2, "
               "num_key_value_heads: 1, max_position_embeddings: 512}"])
    assert rc == 0, capsys.readouterr().err[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "run"] and not list(work.iterdir())
    names = {p.name for p in run.iterdir()}
    assert names <= set(RUN_OUTPUTS) and {"config.yaml", "metrics.jsonl", "checkpoints", "final", "plots"} <= names
    for p in run.rglob("*"):
        assert not p.is_symlink() and p.resolve().is_relative_to(run.resolve()), p
