"""TRL's names: one table for the YAML's top-level keys, the overrides and the CLI options; the
same meaning is read as the jaxalign key with a note, another meaning is refused naming the
jaxalign key; every unknown key is reported in one error."""

import pytest

from jaxalign.algorithms import registry
from jaxalign.config import load_config
from jaxalign.config.trl import TRL_NAMES, _has_key, cli_overrides, refusal, target_of
from jaxalign.errors import JaxalignError

def _load(tmp_path, text, overrides=(), algorithm=None):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    notes = []
    return load_config(p, overrides, algorithm=algorithm, note=notes.append), notes


def test_every_accepted_name_maps_to_a_key_some_algorithm_has():
    for name, row in TRL_NAMES.items():
        if row.differs:
            continue
        targets = {target_of(name, a) for a in registry.BUILTIN}
        ok = [t for t in targets if any(_has_key(t, a) for a in registry.BUILTIN)]
        assert ok, (name, targets)


def test_a_trl_style_yaml_reads_as_jaxalign_keys_with_a_note_each(tmp_path):
    cfg, notes = _load(tmp_path, "model_name_or_path: smollm2-135m-instruct\ndataset_name: data/x.jsonl\n"
                                 "output_dir: runs/x\nlearning_rate: 2.0e-5\nnum_train_epochs: 2\nmax_steps: -1\n"
                                 "max_length: 256\nmax_prompt_length: 64\nwarmup_steps: 3\nlogging_steps: 5\n"
                                 "save_steps: 10\neval_steps: 20\nbf16: true\ngradient_checkpointing: true\n"
                                 "lr_scheduler_type: constant_with_warmup\nmax_grad_norm: 0\nseed: 7\nbeta: 0.2\n",
                       algorithm="dpo")
    assert (cfg.model.path, cfg.data.train, cfg.run_dir) == ("smollm2-135m-instruct", "data/x.jsonl", "runs/x")
    assert cfg.optim.lr == 2e-5 and cfg.optim.warmup_steps == 3 and cfg.optim.schedule == "constant"
    assert cfg.optim.grad_clip is None  # HF: max_grad_norm 0 = no clipping
    assert cfg.train.epochs == 2.0 and cfg.train.steps is None  # TRL: -1 = use the epochs
    assert (cfg.train.log_every, cfg.train.save_every, cfg.train.eval_every) == (5, 10, 20)
    assert (cfg.data.max_length, cfg.data.max_prompt_length) == (256, 64)
    assert cfg.model.dtype == "bfloat16" and cfg.model.param_dtype == "float32" and cfg.model.remat is True
    assert cfg.seed == 7 and cfg.algo.beta == 0.2
    assert "'learning_rate' is TRL's name; read as optim.lr" in notes
    assert "'beta' is TRL's name; read as dpo.beta" in notes
    assert len(notes) == 17  # one per renamed key (seed is jaxalign's name too)


def test_algorithm_specific_names_follow_the_command():
    cfg = load_config(None, ["num_generations=8", "beta=0.04", "loss_type=dr_grpo", "max_completion_length=64",
                             "temperature=0.7"], "grpo", note=lambda m: None)
    assert (cfg.algo.num_generations, cfg.algo.beta, cfg.algo.aggregation) == (8, 0.04, "dr_grpo")
    assert cfg.algo.sampling.max_new_tokens == 64 and cfg.algo.sampling.temperature == 0.7
    cfg = load_config(None, ["loss_type=ipo"], "dpo", note=lambda m: None)
    assert cfg.algo.loss_type == "ipo"
    with pytest.raises(JaxalignError, match=r"^config key 'beta': TRL's name for sft.beta, which `jaxalign sft` "
                                            r"does not have$"):
        load_config(None, ["beta=0.1"], "sft")


def test_an_override_beats_the_yaml_and_both_names_in_one_file_are_refused(tmp_path):
    cfg, _ = _load(tmp_path, "learning_rate: 1.0e-5\n", ["learning_rate=3e-4"])
    assert cfg.optim.lr == 3e-4
    cfg, _ = _load(tmp_path, "learning_rate: 1.0e-5\n", ["optim.lr=5e-4"])
    assert cfg.optim.lr == 5e-4
    with pytest.raises(JaxalignError, match=r"^config keys 'learning_rate' \(TRL's name for optim.lr\) and "
                                            r"'optim.lr' are both set; keep one$"):
        _load(tmp_path, "learning_rate: 1.0e-5\noptim:\n  lr: 2.0e-5\n")


@pytest.mark.parametrize("name, jaxalign_key", [
    ("per_device_train_batch_size", "train.batch_size"),
    ("gradient_accumulation_steps", "train.micro_batch_size"),
    ("warmup_ratio", "optim.warmup_steps"),
    ("weight_decay", "optim.weight_decay"),
    ("fp16", "model.dtype"),
])
def test_another_meaning_is_refused_naming_the_jaxalign_key(tmp_path, name, jaxalign_key):
    with pytest.raises(JaxalignError) as e:
        _load(tmp_path, f"{name}: 4\n")
    msg = str(e.value)
    assert msg.startswith(f"config key {name!r}: TRL's name; not the same as jaxalign's {jaxalign_key}: "), msg
    assert "\n" not in msg
    with pytest.raises(JaxalignError, match=f"^config key {name!r}: TRL's name; not the same"):
        load_config(None, [f"{name}=4"])


def test_the_per_device_batch_refusal_explains_global_vs_per_device():
    why = refusal("per_device_train_batch_size", "sft")
    assert "per device" in why and "global batch" in why and "train.micro_batch_size" in why


def test_a_trl_yaml_reports_every_unknown_key_in_one_line(tmp_path):
    with pytest.raises(JaxalignError) as e:
        _load(tmp_path, "learning_rate: 1.0e-5\nper_device_train_batch_size: 4\ndataset_config: x\n"
                        "push_to_hub: true\noptim:\n  learning_rate: 1\n", algorithm="sft")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("4 unknown config keys: 'per_device_train_batch_size' (TRL's name; not the same as "
                          "jaxalign's train.batch_size: "), msg
    assert "'dataset_config'; 'push_to_hub'; 'optim.learning_rate' (did you mean 'optim.lr'? ('learning_rate' is " \
           "TRL's name))" in msg, msg
    assert msg.endswith("(`jaxalign sft --help` lists every key)"), msg


def test_inside_a_section_a_trl_name_suggests_the_jaxalign_key():
    with pytest.raises(JaxalignError, match=r"^unknown config key 'optim.learning_rate'; did you mean 'optim.lr'\? "
                                            r"\('learning_rate' is TRL's name\) \(valid here: b1, "):
        load_config(None, ["optim.learning_rate=1e-4"])
    with pytest.raises(JaxalignError, match=r"^unknown config key 'train.max_steps'; did you mean 'train.steps'\?"):
        load_config(None, ["train.max_steps=3"])
    with pytest.raises(JaxalignError, match=r"^unknown config key 'grpo.max_completion_length'; did you mean "
                                            r"'grpo.sampling.max_new_tokens'\?"):
        load_config(None, ["grpo.max_completion_length=3"], "grpo")


def test_a_bad_value_of_a_trl_name_names_it_and_its_key():
    with pytest.raises(JaxalignError, match=r"^config key 'lr_scheduler_type' \(TRL's name for optim.schedule\): "
                                            r"'cosine_with_restarts' has no jaxalign equivalent"):
        load_config(None, ["lr_scheduler_type=cosine_with_restarts"], note=lambda m: None)
    with pytest.raises(JaxalignError, match=r"^config key 'bf16' \(TRL's name for model.dtype\): expected true or "
                                            r"false, got 'yes please'"):
        load_config(None, ["bf16=yes please"], note=lambda m: None)


@pytest.mark.parametrize("argv, rest, extra", [
    (["--config", "c.yaml", "--learning_rate", "1e-4", "train.steps=3"], ["--config", "c.yaml", "train.steps=3"],
     ["learning_rate=1e-4"]),
    (["--learning-rate=1e-4", "--output_dir", "runs/x"], [], ["learning_rate=1e-4", "output_dir=runs/x"]),
    (["--bf16", "--quiet"], ["--quiet"], ["bf16=true"]),
    (["--bf16", "false", "--gradient_checkpointing"], [], ["bf16=false", "gradient_checkpointing=true"]),
    (["--bf16", "train.steps=2"], ["train.steps=2"], ["bf16=true"]),
    (["--config", "c.yaml", "--run-dir", "r"], ["--config", "c.yaml", "--run-dir", "r"], []),
])
def test_cli_options_become_overrides(argv, rest, extra):
    assert cli_overrides(argv) == (rest, extra)


def test_a_cli_option_without_its_value_is_one_line():
    with pytest.raises(JaxalignError, match=r"^--learning_rate: expected a value \(TRL's name for optim.lr\)$"):
        cli_overrides(["--learning_rate"])


def test_the_readme_table_is_the_table():
    from pathlib import Path

    from jaxalign.config.trl import markdown_table

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    assert markdown_table() in readme, "README 'TRL names': paste jaxalign.config.trl.markdown_table()"
