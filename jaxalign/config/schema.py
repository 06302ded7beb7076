"""The run config's shared sections as dataclasses (``model:``, ``data:``, ``optim:``,
``train:``, ``mesh:``) and :class:`RunConfig`, which holds them plus the algorithm's own section
(its dataclass comes from :mod:`jaxalign.algorithms.registry`)."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class ModelSpec:
    """Which model to train. ``path``: HF dir, .gguf or alias; or ``init: random`` + ``config``."""

    path: str | None = None
    init: str = "pretrained"  # pretrained | random
    config: dict | None = None  # ModelConfig fields, for init=random
    tokenizer: str | None = None  # default: the model path
    dtype: str = "float32"  # compute dtype; parameters stay in param_dtype (master weights)
    param_dtype: str = "float32"
    remat: bool = False  # rematerialise each decoder block in the backward pass


@dataclasses.dataclass
class DataConfig:
    train: str | None = None
    eval: str | None = None
    format: str = "auto"
    max_length: int = 512
    max_prompt_length: int = 256
    prompt_overflow: str = "truncate_left"  # truncate_left | drop | error
    skip_invalid_rows: bool = False
    buckets: str | list | None = "pow2"
    eval_fraction: float = 0.0  # held out from train when no eval file is given
    packing: bool = False  # several examples per row of max_length tokens (sft, rm, dpo); batch_size counts rows


@dataclasses.dataclass
class OptimConfig:
    lr: float = 1e-5
    schedule: str = "cosine"  # constant | cosine | linear
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    grad_clip: float | None = 1.0


@dataclasses.dataclass
class TrainConfig:
    steps: int | None = None
    epochs: float = 1.0
    batch_size: int = 8  # global, in examples
    micro_batch_size: int | None = None  # gradient accumulation when smaller than batch_size
    eval_every: int = 0
    eval_at_start: bool = False  # also evaluate before the first step (a baseline for the curves)
    eval_batches: int | None = None
    log_every: int = 1
    save_every: int = 0
    keep_checkpoints: int = 2
    save_final: bool = True
    plots: bool = True
    max_nonfinite_steps: int = 10  # consecutive skipped (NaN/Inf) steps before the run stops
    preflight: bool = True  # compile the step first and refuse a run that cannot fit in memory
    device_memory_limit: int | str | None = None  # bytes or "16GiB"; default: the device's own limit
    resume_cast: bool = False  # resume even when model.param_dtype differs from the checkpoint (casts it)


@dataclasses.dataclass
class MeshSpec:
    """Mesh shape (``-1``: the remaining devices) and overrides of the logical-axis rules, as
    MaxText's ``logical_axis_rules``: ``[[embed, fsdp], [mlp, [fsdp, tensor]], [vocab, null]]``
    (or a mapping); see :func:`jaxalign.parallel.make_rules`."""

    data: int = 1
    fsdp: int = -1
    tensor: int = 1
    logical_axis_rules: list | dict | None = None


@dataclasses.dataclass
class RunConfig:
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
