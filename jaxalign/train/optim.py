"""optax chains from config: AdamW, warmup + constant / cosine / linear decay, global-norm clip."""

from __future__ import annotations

import optax

from jaxalign.config import OptimConfig
from jaxalign.errors import JaxalignError

SCHEDULES = ("constant", "cosine", "linear")


def make_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """Learning rate per step: linear warmup from 0, then the chosen decay to ``min_lr_ratio * lr``."""
    if cfg.schedule not in SCHEDULES:
        raise JaxalignError(f"config key 'optim.schedule': {cfg.schedule!r} is not one of {SCHEDULES}")
    warm = max(0, min(cfg.warmup_steps, total_steps))
    decay_steps = max(1, total_steps - warm)
    end = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "constant":
        after = optax.constant_schedule(cfg.lr)
    elif cfg.schedule == "cosine":
        after = optax.cosine_decay_schedule(cfg.lr, decay_steps, alpha=cfg.min_lr_ratio)
    else:
        after = optax.linear_schedule(cfg.lr, end, decay_steps)
    if warm == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warm), after], [warm])


def make_optimizer(cfg: OptimConfig, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(AdamW with global-norm clipping, its learning-rate schedule)."""
    if cfg.lr <= 0:
        raise JaxalignError(f"config key 'optim.lr': must be > 0, got {cfg.lr}")
    schedule = make_schedule(cfg, total_steps)
    parts = []
    if cfg.grad_clip is not None and cfg.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip))
    parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay))
    return optax.chain(*parts), schedule
