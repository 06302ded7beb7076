"""The run config's shared sections as dataclasses (``model:``, ``data:``, ``optim:``,
``train:``, ``mesh:``) and :class:`RunConfig`, which holds them plus the algorithm's own section
(its dataclass comes from :mod:`jaxalign.algorithms.registry`).

Each key's meaning is written once, in its class docstring's attribute list (``key: meaning``):
``jaxalign <algorithm> --help`` prints it from there (:mod:`jaxalign.config.fields`), and a test
fails when a field has none. This module imports no JAX."""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxalign.models.families import LORA_TARGETS




@dataclasses.dataclass
class LoraSpec:
    """LoRA adapters (Hu et al. 2021): only they are trained, the base model stays frozen.

    rank: the adapters' rank r (``lora_A [r, in]``, ``lora_B [out, r]``, PEFT's layout).
    alpha: the adapter output is scaled by alpha / rank (PEFT's ``lora_alpha``).
    dropout: dropout on the adapters' input (PEFT's lora_dropout), in training forwards only.
    targets: the linear layers that get an adapter (of q_proj, k_proj, v_proj, o_proj,
      gate_proj, up_proj, down_proj).
    init: ``default`` (A kaiming-uniform, B zero, as PEFT) or ``gaussian`` (A normal(0, 1/r), B zero).
    base_dtype: dtype the frozen base weights are stored in (null: model.param_dtype): float32,
      bfloat16, float16, or int8 / nf4 (QLoRA: the decoder's linear weights quantised by qwix);
      the adapters stay in model.param_dtype.
    adapter: a PEFT adapter directory (adapter_config.json + adapter_model.safetensors) to start from.
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list = dataclasses.field(default_factory=lambda: list(LORA_TARGETS))
    init: str = "default"
    base_dtype: str | None = None
    adapter: str | None = None


@dataclasses.dataclass
class ModelSpec:
    """Which model to train: ``path``, or ``init: random`` + ``config``.

    path: the model to start from: a Hugging Face dir, a .gguf file, an alias (smollm2-135m-instruct)
      or a Hub id (``org/name[@revision]``).
    init: ``pretrained`` (load ``path``) or ``random`` (a new model of shape ``config``).
    config: ModelConfig fields (vocab_size, hidden_size, ...) of a random model (init: random).
    tokenizer: the tokenizer's HF dir, .gguf, alias or Hub id; default: the model path.
    dtype: compute dtype (float32 | bfloat16 | float16); parameters stay in param_dtype.
    param_dtype: dtype of the parameters and optimizer state (the master weights).
    remat: what the backward pass recomputes instead of keeping: ``true`` each decoder block (least
      memory, ~1/3 more compute); ``dots`` (the default) all of each block but its weight matmuls'
      outputs: norms, RoPE, the gated activation and the attention (a few % more compute);
      ``attention`` only each layer's attention scores and probabilities (the [batch, heads, seq,
      seq] arrays); ``false`` nothing.
    lora: LoRA adapters on the frozen model (README: LoRA); null: train every weight.
    """

    path: str | None = None
    init: str = "pretrained"
    config: dict | None = None
    tokenizer: str | None = None
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: bool | str = "dots"
    lora: LoraSpec | None = None


@dataclasses.dataclass
class DataConfig:
    """The training data and how it becomes token batches.

    train: the training data: a .jsonl/.json/.parquet/.csv file, a dataset directory or a Hub
      dataset (``org/name[@rev][:split]``), or a list of sources with weights (README: Data sources).
    eval: held-out data, in the same forms; default: none (or data.eval_fraction of train).
    subset: the dataset's config name (Hub datasets, dataset directories).
    columns: ``{column in the data: format field}`` renames before format detection; null drops a column.
    format: the rows' format (``auto`` detects it: prompt/completion, messages, preference, ...).
    max_length: most tokens per sequence, prompt and completion together.
    max_prompt_length: most prompt tokens (longer prompts: data.prompt_overflow).
    prompt_overflow: what a longer prompt gets: ``truncate_left``, ``drop`` (the row) or ``error``.
    skip_invalid_rows: skip (and count) rows that do not fit the format instead of stopping.
    buckets: padded lengths: ``pow2``, a list of lengths, or null (pad to data.max_length).
    eval_fraction: fraction of train held out for evaluation when no eval data is given.
    chat_template: a Jinja chat template file (or a tokenizer dir) replacing the tokenizer's own.
    packing: several examples per row of data.max_length tokens (sft, rm, dpo; a pair's prompt once);
      train.batch_size counts rows.
    """

    train: str | list | dict | None = None
    eval: str | list | dict | None = None
    subset: str | None = None
    columns: dict | None = None
    format: str = "auto"
    max_length: int = 512
    max_prompt_length: int = 256
    prompt_overflow: str = "truncate_left"
    skip_invalid_rows: bool = False
    buckets: str | list | None = "pow2"
    eval_fraction: float = 0.0
    chat_template: str | None = None
    packing: bool = False


@dataclasses.dataclass
class OptimConfig:
    """AdamW with a warm-up and a decay schedule, and global-norm gradient clipping.

    lr: the peak learning rate.
    schedule: after the warm-up: ``constant``, ``cosine`` or ``linear`` decay to lr x min_lr_ratio.
    warmup_steps: optimizer steps of linear warm-up from 0 to lr.
    min_lr_ratio: the learning rate at the end of the decay, as a fraction of lr.
    weight_decay: AdamW's decoupled weight decay (every parameter).
    b1: Adam's beta1. b2: Adam's beta2. eps: Adam's epsilon.
    grad_clip: clip the global gradient norm to this; null: no clipping.
    """

    lr: float = 1e-5
    schedule: str = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    grad_clip: float | None = 1.0


@dataclasses.dataclass
class TrainConfig:
    """How long to train, in what batches, and what to log, evaluate and save.

    steps: optimizer steps (iterations for the online algorithms); null: train.epochs over the data.
    epochs: passes over the training data when train.steps is null (may be fractional).
    batch_size: the global batch: examples (prompts, online) per optimizer step, over all devices.
    micro_batch_size: examples per forward pass, over all devices (gradient accumulation when
      smaller than batch_size); null: batch_size.
    eval_every: evaluate every this many steps (0: never).
    eval_at_start: also evaluate before the first step (a baseline for the curves).
    eval_batches: evaluate on at most this many batches; null: all the eval data.
    log_every: log the metrics every this many steps.
    save_every: checkpoint every this many steps (0: at the end and on a signal only).
    keep_checkpoints: how many of the newest checkpoints to keep.
    save_final: write the trained model to run_dir/final (Hugging Face format).
    plots: draw the metrics to run_dir/plots/training.png.
    max_nonfinite_steps: consecutive skipped (NaN/Inf) steps before the run stops.
    preflight: compile the step first and refuse a run that cannot fit in memory.
    device_memory_limit: bytes or "16GiB" per device for the preflight; default: the device's own.
    resume_cast: resume even when model.param_dtype differs from the checkpoint (casts it).
    report_to: experiment trackers: tensorboard | wandb | trackio | mlflow | none, or a list of them.
    log_samples: online algorithms: sample completions (with rewards) logged at each eval; 0: none.
    """

    steps: int | None = None
    epochs: float = 1.0
    batch_size: int = 8
    micro_batch_size: int | None = None
    eval_every: int = 0
    eval_at_start: bool = False
    eval_batches: int | None = None
    log_every: int = 1
    save_every: int = 0
    keep_checkpoints: int = 2
    save_final: bool = True
    plots: bool = True
    max_nonfinite_steps: int = 10
    preflight: bool = True
    device_memory_limit: int | str | None = None
    resume_cast: bool = False
    report_to: str | list = "tensorboard"
    log_samples: int = 4


@dataclasses.dataclass
class MeshSpec:
    """Mesh shape (``-1``: the remaining devices) and overrides of the logical-axis rules, as
    MaxText's ``logical_axis_rules``: ``[[embed, fsdp], [mlp, [fsdp, tensor]], [vocab, null]]``
    (or a mapping); see :func:`jaxalign.parallel.make_rules`.

    data: data-parallel devices (-1: all the remaining ones).
    fsdp: devices the parameters are sharded over (FSDP; -1: all the remaining ones).
    tensor: tensor-parallel devices (-1: all the remaining ones).
    logical_axis_rules: overrides of the logical-axis rules; null: the defaults.
    """

    data: int = 1
    fsdp: int = -1
    tensor: int = 1
    logical_axis_rules: list | dict | None = None


@dataclasses.dataclass
class RunConfig:
    """A whole run: the top-level keys and the shared sections (plus the algorithm's own).

    algorithm: the algorithm (the command's name picks it: ``jaxalign dpo``).
    seed: the run's random seed (same seed and config: the same run, bit for bit on CPU).
    run_dir: output directory (``--run-dir``); default: runs/<algorithm>-<time>.
    quiet: no progress bar (``--quiet``).
    model: the model section. data: the data section. optim: the optimizer section.
    train: the training section. mesh: the device-mesh section.
    """

    algorithm: str = "sft"
    seed: int = 0
    run_dir: str | None = None
    quiet: bool = False
    model: ModelSpec = dataclasses.field(default_factory=ModelSpec)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    mesh: MeshSpec = dataclasses.field(default_factory=MeshSpec)
    # The algorithm's own dataclass, filled from the section named after it (e.g. `dpo:`).
    algo: Any = dataclasses.field(default=None, init=False)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        algo = d.pop("algo")
        from jaxalign.algorithms.registry import section_of

        d[section_of(self.algorithm)] = algo
        return d
