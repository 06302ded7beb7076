"""train.report_to: the value's checks, one line naming the key: an unknown backend, 'none' with
others, a tracker that is not installed (with the pip command that installs it), refused when
the config is loaded, before the run directory is touched."""

from __future__ import annotations

import pytest

from jaxalign.cli import main
from jaxalign.config import load_config, report_to
from jaxalign.config.report_to import parse_report_to
from jaxalign.errors import JaxalignError


@pytest.mark.parametrize("value, want", [
    ("tensorboard", ("tensorboard",)), ("none", ()), ([], ()), (["none"], ()),
    (["tensorboard", "tensorboard"], ("tensorboard",)),
])
def test_values(value, want):
    assert parse_report_to(value) == want


@pytest.mark.parametrize("value, match", [
    ("tensorbord", "'tensorbord' is not one of tensorboard, wandb, trackio, mlflow, none"),
    (["tensorboard", "none"], "'none' cannot be combined with tensorboard"),
    (3, "expected a backend name or a list of them, got 3"),
    ([None], "None is not one of"),
])
def test_bad_values_name_the_key(value, match):
    with pytest.raises(JaxalignError) as e:
        parse_report_to(value)
    assert str(e.value).startswith("config key 'train.report_to': ") and match in str(e.value)
    assert "\n" not in str(e.value)


@pytest.fixture
def nothing_installed(monkeypatch):
    monkeypatch.setattr(report_to, "_installed", lambda module: False)


@pytest.mark.parametrize("name, module", [("wandb", "wandb"), ("trackio", "trackio"), ("mlflow", "mlflow")])
def test_a_tracker_that_is_not_installed_says_what_to_install(nothing_installed, name, module):
    assert str(parse_error(name)) == (f"config key 'train.report_to': {name} is not installed: "
                                      f"pip install 'jaxalign[tracking]' (or pip install {module})")


def parse_error(name):
    try:
        parse_report_to(name)
    except JaxalignError as e:
        return e
    raise AssertionError("no error")


def test_missing_tensorboardx_is_named_too(nothing_installed):
    assert "pip install tensorboardX" in str(parse_error("tensorboard"))


def test_the_cli_refuses_it_at_config_load_before_the_run_dir_exists(nothing_installed, tmp_path, capsys):
    run_dir = tmp_path / "run"
    rc = main(["sft", "--config", "configs/sft_tiny.yaml", "--run-dir", str(run_dir), "--quiet",
               "train.report_to=[wandb]"])
    err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert rc == 2 and err == ["error: config key 'train.report_to': wandb is not installed: "
                               "pip install 'jaxalign[tracking]' (or pip install wandb)"]
    assert not run_dir.exists()
    with pytest.raises(JaxalignError, match="train.report_to"):
        load_config("configs/sft_tiny.yaml", ["train.report_to=mlflow"], algorithm="sft")
