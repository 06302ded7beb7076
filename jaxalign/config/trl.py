"""TRL's names for jaxalign's config keys: the one table behind the YAML's top-level keys, the
``key=value`` overrides, the ``--flag value`` / ``--flag=value`` options of the training commands
and the "did you mean" of an unknown key inside a section.

A TRL name whose meaning is exactly a jaxalign key's is accepted (one ``note:`` line on stderr
names the jaxalign key); one whose meaning differs is refused with the jaxalign key and the
difference. ``{section}`` in a target is the algorithm's section (``beta`` -> ``dpo.beta``); a
target the algorithm's section does not have is refused. Nothing here imports JAX.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Callable

from jaxalign.errors import JaxalignError


@dataclasses.dataclass(frozen=True)
class TrlName:
    """One row: ``target`` (a dotted jaxalign key, or ``{algorithm: key, "*": key}``), ``differs``
    (empty: the same meaning, accepted; else why it is refused), ``convert`` (TRL's value ->
    jaxalign's, may raise :class:`JaxalignError`), ``switch`` (a CLI flag that may stand alone:
    ``--bf16`` = ``--bf16 true``)."""

    target: str | dict
    differs: str = ""
    convert: Callable[[Any], Any] | None = None
    switch: bool = False


def _steps(v):
    """-1 (TRL: use num_train_epochs) becomes null"""
    return None if v == -1 else v  # TRL's max_steps -1: "train for num_train_epochs"


def _warmup(v):
    """a fraction below 1 (transformers 5: a ratio) is refused"""
    if isinstance(v, float) and 0 < v < 1:
        raise JaxalignError(f"{v} is a fraction of the run (transformers' warm-up ratio); jaxalign counts "
                            "optimizer steps: set optim.warmup_steps = ratio x train.steps")
    return v


def _clip(v):
    """0 (HF: no clipping) becomes null"""
    return None if v == 0 else v  # HF Trainer skips clipping at max_grad_norm 0


def _bf16(v):
    """true: bfloat16 compute over float32 master weights; false: float32"""
    if not isinstance(v, bool):
        raise JaxalignError(f"expected true or false, got {v!r}")
    return "bfloat16" if v else "float32"


_SCHEDULES = {"linear": "linear", "cosine": "cosine", "constant": "constant", "constant_with_warmup": "constant"}


def _schedule(v):
    """linear, cosine, constant; constant_with_warmup is constant (every schedule warms up first)"""
    if v not in _SCHEDULES:
        raise JaxalignError(f"{v!r} has no jaxalign equivalent (optim.schedule: "
                            "constant | cosine | linear, after optim.warmup_steps of linear warm-up)")
    return _SCHEDULES[v]


def _scale_rewards(v):
    """true is group, false is none"""
    return {True: "group", False: "none"}.get(v, v) if isinstance(v, bool) else v


_PER_DEVICE = ("TRL's counts examples per device and forward pass (TRL's global batch = it x devices x "
               "gradient_accumulation_steps); jaxalign's train.batch_size is the global batch (examples per "
               "optimizer step, split over the devices) and train.micro_batch_size the global examples per "
               "forward pass: set those two")

TRL_NAMES: dict[str, TrlName] = {
    "model_name_or_path": TrlName("model.path"),
    "dataset_name": TrlName("data.train"),
    "output_dir": TrlName("run_dir"),
    "seed": TrlName("seed"),
    "learning_rate": TrlName("optim.lr"),
    "warmup_steps": TrlName("optim.warmup_steps", convert=_warmup),
    "lr_scheduler_type": TrlName("optim.schedule", convert=_schedule),
    "max_grad_norm": TrlName("optim.grad_clip", convert=_clip),
    "adam_beta1": TrlName("optim.b1"),
    "adam_beta2": TrlName("optim.b2"),
    "adam_epsilon": TrlName("optim.eps"),
    "num_train_epochs": TrlName("train.epochs"),
    "max_steps": TrlName("train.steps", convert=_steps),
    "logging_steps": TrlName("train.log_every"),
    "save_steps": TrlName("train.save_every"),
    "eval_steps": TrlName("train.eval_every"),
    "save_total_limit": TrlName("train.keep_checkpoints"),
    "report_to": TrlName("train.report_to"),
    "max_length": TrlName("data.max_length"),
    "max_prompt_length": TrlName("data.max_prompt_length"),
    "bf16": TrlName("model.dtype", convert=_bf16, switch=True),
    "gradient_checkpointing": TrlName("model.remat", switch=True),
    "beta": TrlName("{section}.beta"),
    "loss_type": TrlName({"grpo": "grpo.aggregation", "*": "{section}.loss_type"}),
    "label_smoothing": TrlName("{section}.label_smoothing"),
    "rpo_alpha": TrlName("{section}.rpo_alpha"),
    "neftune_noise_alpha": TrlName("{section}.neftune_alpha"),
    "assistant_only_loss": TrlName("{section}.assistant_only_loss", switch=True),
    "num_generations": TrlName("{section}.num_generations"),
    "max_completion_length": TrlName("{section}.sampling.max_new_tokens"),
    "temperature": TrlName("{section}.sampling.temperature"),
    "top_k": TrlName("{section}.sampling.top_k"),
    "top_p": TrlName("{section}.sampling.top_p"),
    "epsilon": TrlName("grpo.clip_eps"),
    "epsilon_high": TrlName("grpo.clip_eps_high"),
    "scale_rewards": TrlName("grpo.scale_rewards", convert=_scale_rewards),
    # Refused: the same idea, another meaning.
    "per_device_train_batch_size": TrlName("train.batch_size", _PER_DEVICE),
    "gradient_accumulation_steps": TrlName(
        "train.micro_batch_size", "jaxalign accumulates train.batch_size / train.micro_batch_size micro-batches "
        "per step: set train.micro_batch_size = train.batch_size / gradient_accumulation_steps"),
    "warmup_ratio": TrlName("optim.warmup_steps", "jaxalign counts the warm-up in optimizer steps: set "
                            "optim.warmup_steps = warmup_ratio x train.steps"),
    "weight_decay": TrlName("optim.weight_decay", "HF Trainer skips biases and norm weights, jaxalign's "
                            "optim.weight_decay (AdamW) decays every parameter; set optim.weight_decay if "
                            "that is meant"),
    "fp16": TrlName("model.dtype", "jaxalign has no float16 loss scaling; model.dtype=bfloat16 is TRL's bf16 "
                    "(bfloat16 compute, float32 master weights)", switch=True),
    "eval_strategy": TrlName("train.eval_every", "jaxalign evaluates every train.eval_every steps (0: never)"),
    "save_strategy": TrlName("train.save_every", "jaxalign saves every train.save_every steps (0: at the end "
                             "and on a signal)"),
    "resume_from_checkpoint": TrlName("run_dir", "a run resumes from its own run dir's newest checkpoint: "
                                      "rerun with the same --run-dir"),
    "use_peft": TrlName("model.path", "jaxalign trains every parameter (no PEFT/LoRA)", switch=True),
}


def target_of(name: str, algorithm: str | None) -> str:
    """The jaxalign key TRL's ``name`` stands for (``{section}`` filled in for ``algorithm``)."""
    target = TRL_NAMES[name].target
    if isinstance(target, dict):
        target = target.get(algorithm or "", target["*"])
    section = (algorithm or "<algorithm>").replace("-", "_")
    return target.replace("{section}", section)


def _has_key(key: str, algorithm: str | None) -> bool:
    """Whether the run config of ``algorithm`` has the dotted ``key`` (through nested dataclasses)."""
    from jaxalign.algorithms import registry
    from jaxalign.config.schema import RunConfig

    first, *rest = key.split(".")
    if algorithm in registry.ALGORITHMS and first == registry.section_of(algorithm):
        cls = registry.get(algorithm).config_class
    elif first in {f.name for f in dataclasses.fields(RunConfig) if f.init}:
        if not rest:
            return True
        cls = typing.get_type_hints(RunConfig)[first]
    else:
        return False
    for part in rest:
        if not dataclasses.is_dataclass(cls):
            return False
        fields = {f.name for f in dataclasses.fields(cls)}
        if part not in fields:
            return False
        tp = typing.get_type_hints(cls)[part]  # (not coerce.dataclass_in: coerce imports this module)
        cls = next((a for a in (tp, *typing.get_args(tp)) if dataclasses.is_dataclass(a)), None)
    return True


def refusal(name: str, algorithm: str | None) -> str | None:
    """Why TRL's ``name`` is not accepted for ``algorithm`` (one line), or None when it is."""
    row, target = TRL_NAMES[name], target_of(name, algorithm)
    if row.differs:
        return f"TRL's name; not the same as jaxalign's {target}: {row.differs}"
    if not _has_key(target, algorithm):
        return f"TRL's name for {target}, which `jaxalign {algorithm}` does not have"
    return None


def accept(name: str, value, algorithm: str | None, note: Callable[[str], None]) -> tuple[list[str], Any]:
    """The dotted key (as a list) and value TRL's ``name: value`` sets; raises the refusal."""
    why = refusal(name, algorithm)
    if why is not None:
        raise JaxalignError(f"config key {name!r}: {why}")
    row, target = TRL_NAMES[name], target_of(name, algorithm)
    if row.convert is not None:
        try:
            value = row.convert(value)
        except JaxalignError as e:
            raise JaxalignError(f"config key {name!r} (TRL's name for {target}): {e}") from None
    if target != name:
        note(f"{name!r} is TRL's name; read as {target}")
    return target.split("."), value


def suggestion(name: str, algorithm: str | None, key: str = "") -> str | None:
    """The hint for the unknown ``key`` (dotted) whose last part is TRL's ``name``, or None."""
    if name not in TRL_NAMES or (algorithm is None and "{section}" in str(TRL_NAMES[name].target)):
        return None
    if target_of(name, algorithm) == key:
        return None  # the key itself is missing here: nothing to say about TRL
    why = refusal(name, algorithm)
    if why is not None:
        return why
    return f"did you mean {target_of(name, algorithm)!r}? ({name!r} is TRL's name)"


def cli_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """``argv`` (after the command) with each ``--trl_name value`` / ``--trl_name=value`` (dashes or
    underscores) taken out, and the ``trl_name=value`` overrides they become (appended after
    the other overrides by the caller, so that they win over the YAML as overrides do)."""
    rest, extra = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest.extend(argv[i:])
            break
        name, eq, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        name = name.replace("-", "_")
        if name not in TRL_NAMES:
            rest.append(arg)
            i += 1
            continue
        if not eq:
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            takes = nxt is not None and not nxt.startswith("--") and "=" not in nxt
            if TRL_NAMES[name].switch and takes and nxt.lower() not in ("true", "false", "1", "0", "yes", "no"):
                takes = False
            if takes:
                value, i = nxt, i + 1
            elif TRL_NAMES[name].switch:
                value = "true"
            else:
                raise JaxalignError(f"--{name}: expected a value (TRL's name for {target_of(name, None)})")
        extra.append(f"{name}={value}")
        i += 1
    return rest, extra


def markdown_table() -> str:
    """The table as Markdown (README "TRL names" holds it verbatim; a test compares the two)."""
    rows = ["| TRL | jaxalign | |", "|---|---|---|"]
    for name, row in TRL_NAMES.items():
        if isinstance(row.target, dict):
            target = ", ".join(f"`{t.replace('{section}', '<algorithm>')}`" + ("" if a == "*" else f" ({a})")
                               for a, t in sorted(row.target.items(), key=lambda kv: kv[0] == "*"))
        else:
            target = f"`{row.target.replace('{section}', '<algorithm>')}`"
        if name == "output_dir":
            target += " (`--run-dir`)"
        what = f"refused: {row.differs}" if row.differs else "accepted"
        if row.convert is not None and not row.differs:
            what += f" ({(row.convert.__doc__ or '').strip() or 'value translated'})"
        rows.append(f"| `{name}` | {target} | {what} |")
    return "\n".join(rows)
