"""Memory preflight: compile the train step for the run's largest batch before training and
refuse a run that cannot fit in device memory.

XLA's buffer assignment for the compiled step (``compiled.memory_analysis()``) gives, per
device: the arguments (train state, batch, frozen models), the outputs, the bytes where outputs
reuse donated arguments (the train state), the temporaries (gradients, activations, workspace)
and the generated code. Their sum ``arguments + outputs - aliased + temporaries + code`` is the
step's peak. The limit is ``train.device_memory_limit`` when set, else the smallest
``bytes_limit`` of the mesh's devices (GPU/TPU; a CPU has none, so the check is skipped there
unless the key is set).

The step is compiled through the same ``jax.jit`` object the loop calls, so the loop reuses
this executable: the check costs no second compile. Offline algorithms are checked on their
longest batch before anything is written; online ones (``Job.experience``) on their first
experience batch, since its shape is known only once it is sampled. Sampling, evaluation and
reward models outside the train step are not part of this estimate; the whole loop is planned
abstractly by :mod:`jaxalign.algorithms.plan` (``jaxalign plan``, and online runs with a known
limit before they build anything).
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from typing import Any

import jax
import numpy as np

from jaxalign.algorithms.registry import section_of
from jaxalign.errors import JaxalignError

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(value: Any, key: str = "train.device_memory_limit") -> int | None:
    """``None``, an int (bytes) or a string such as ``"2GiB"``, ``"512MB"``, ``"1.5e9"`` -> bytes."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        n = value
    else:
        m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([A-Za-z]*)\s*", str(value))
        try:
            n = float(m.group(1)) * _UNITS[m.group(2).lower()] if m else None
        except (KeyError, ValueError):
            n = None
        if n is None:
            raise JaxalignError(f"config key {key!r}: expected bytes or a size such as '16GiB' or '512MB', "
                                f"got {value!r}")
    if not n > 0 or not math.isfinite(n):
        raise JaxalignError(f"config key {key!r}: must be > 0, got {value!r}")
    return int(n)


def fmt_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def per_device_bytes(tree) -> int:
    """Bytes one device holds of ``tree`` (arrays or ShapeDtypeStructs with shardings): the
    largest shard of each leaf (replicated leaves count in full)."""
    total = 0
    for x in jax.tree.leaves(tree):
        shape = tuple(x.shape)
        sharding = getattr(x, "sharding", None)
        if sharding is not None and hasattr(sharding, "shard_shape"):
            shape = tuple(sharding.shard_shape(shape))
        total += -(-math.prod(shape) * _bits(x.dtype) // 8)
    return total


def _bits(dtype) -> int:
    """Bits per element; 4-bit types (QLoRA's nf4 codes are uint4) count as XLA packs them, two
    to a byte (numpy's itemsize says 1)."""
    dtype = np.dtype(dtype)
    return 4 if dtype.name in ("int4", "uint4", "float4_e2m1fn") else 8 * dtype.itemsize


def device_limit(cfg, mesh) -> tuple[int | None, str]:
    """(bytes per device, where it comes from): ``train.device_memory_limit``, else the smallest
    ``memory_stats()['bytes_limit']`` among the mesh's devices of this process, else None."""
    limit = parse_bytes(getattr(cfg.train, "device_memory_limit", None))
    if limit is not None:
        return limit, "train.device_memory_limit"
    limits = []
    for d in mesh.devices.flat:
        if d.process_index != jax.process_index():
            continue
        try:
            stats = d.memory_stats()
        except Exception:  # noqa: BLE001 - backends without memory stats
            stats = None
        if stats and stats.get("bytes_limit"):
            limits.append(int(stats["bytes_limit"]))
    if limits:
        return min(limits), f"{mesh.devices.flat[0].platform} device memory"
    return None, "set train.device_memory_limit"


@dataclasses.dataclass
class Estimate:
    """Per-device memory of one train step, in bytes (see the module docstring)."""

    params: int
    opt_state: int
    other_state: int
    frozen: int
    batch: int
    arguments: int
    outputs: int
    aliased: int
    temp: int
    code: int
    limit: int | None
    limit_source: str
    batch_shapes: dict
    devices: int
    message: str | None = None  # the one-line error when it does not fit (set by plan())

    @property
    def total(self) -> int:
        return self.arguments + self.outputs - self.aliased + self.temp + self.code

    @property
    def fits(self) -> bool:
        return self.limit is None or self.total <= self.limit

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(total=self.total, fits=self.fits)
        return d

    def summary(self) -> str:
        """One line for the run log."""
        limit = "no known limit" if self.limit is None else f"limit {fmt_bytes(self.limit)} ({self.limit_source})"
        return (f"memory: the train step needs about {fmt_bytes(self.total)} per device (state "
                f"{fmt_bytes(self.params + self.opt_state + self.other_state)}, temporaries "
                f"{fmt_bytes(self.temp)}); {limit}")

    def table(self) -> str:
        """The per-device breakdown that ``jaxalign plan`` prints."""
        by_shape: dict = {}
        for k, v in self.batch_shapes.items():
            by_shape.setdefault(tuple(v), []).append(k)
        shapes = "; ".join(f"{', '.join(ks)} {list(v)}" for v, ks in by_shape.items())
        rows = [
            ("parameters", self.params),
            ("optimizer state", self.opt_state),
            ("other train state", self.other_state),
            ("frozen models (reference, reward)", self.frozen),
            ("batch", self.batch),
            ("step outputs (not reusing the state)", self.outputs - self.aliased),
            ("temporaries (gradients, activations)", self.temp),
            ("  of which gradients, about", min(self.params, self.temp)),
            ("generated code", self.code),
            ("total (peak of the train step)", self.total),
        ]
        width = max(len(r[0]) for r in rows)
        lines = [f"memory per device of the compiled train step ({self.devices} device(s); batch: {shapes})"]
        lines += [f"  {name:<{width}}  {fmt_bytes(n):>11}" for name, n in rows]
        limit = "unknown" if self.limit is None else fmt_bytes(self.limit)
        lines.append(f"  {'device limit':<{width}}  {limit:>11}  ({self.limit_source})")
        if self.limit is None:
            verdict = "cannot tell whether it fits (no device memory limit known)"
        elif self.fits:
            verdict = f"fits ({fmt_bytes(self.limit - self.total)} to spare)"
        else:
            verdict = f"does NOT fit ({fmt_bytes(self.total - self.limit)} over)"
        lines.append(f"  {verdict}")
        return "\n".join(lines)


def abstract_batch(batch, mesh):
    """ShapeDtypeStructs of the global batch the loop feeds the step: a device batch as it is;
    a numpy batch (this process's rows) with ``process_count`` times its rows, on the loop's
    batch shardings (:func:`jaxalign.parallel.global_batch`)."""
    from jaxalign.parallel import batch_shardings

    def one(x):
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        shape = (x.shape[0] * jax.process_count(),) + tuple(x.shape[1:])
        return jax.ShapeDtypeStruct(shape, x.dtype)

    shapes = jax.tree.map(one, batch)
    sh = batch_shardings(shapes, mesh)
    return jax.tree.map(lambda x, s: x if x.sharding is not None else
                        jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, sh)


def longest_batch(batches):
    """A batch of the largest shape ``batches`` will yield (``longest_batch()`` of a
    :class:`~jaxalign.data.BatchIterator`), else its next batch, read without moving it."""
    if hasattr(batches, "longest_batch"):
        return batches.longest_batch()
    position = batches.state_dict()
    batch = next(batches)
    batches.load_state_dict(position)
    return batch


def estimate(jit_step, state, batch, frozen, mesh, cfg) -> Estimate:
    """Compile ``jit_step(state, batch, frozen)`` (abstractly: nothing runs) and read its memory."""
    abstract = lambda t: jax.tree.map(  # noqa: E731
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), t)
    batch = abstract_batch(batch, mesh)
    compiled = jit_step.lower(abstract(state), batch, abstract(frozen)).compile()
    ma = compiled.memory_analysis()
    if isinstance(ma, (list, tuple)):  # some versions return one entry per device
        ma = ma[0]
    limit, source = device_limit(cfg, mesh)
    get = lambda name: int(getattr(ma, name, 0) or 0) if ma is not None else 0  # noqa: E731
    params, opt = per_device_bytes(state.params), per_device_bytes(state.opt_state)
    return Estimate(
        params=params, opt_state=opt, other_state=per_device_bytes(state) - params - opt,
        frozen=per_device_bytes(frozen), batch=per_device_bytes(batch),
        arguments=get("argument_size_in_bytes"), outputs=get("output_size_in_bytes"),
        aliased=get("alias_size_in_bytes"), temp=get("temp_size_in_bytes"),
        code=get("generated_code_size_in_bytes"), limit=limit, limit_source=source,
        batch_shapes={k: tuple(v.shape) for k, v in batch.items()} if isinstance(batch, dict) else {},
        devices=mesh.devices.size)


def knobs(cfg, mesh, online: bool) -> list[str]:
    """The config keys that lower the train step's memory, with their current values."""
    t, out = cfg.train, []
    mb = t.micro_batch_size or t.batch_size
    if mb > 1:
        rows = " packed rows" if getattr(cfg.data, "packing", False) else ""
        out.append(f"lower train.micro_batch_size (now {mb}{rows}; gradient accumulation keeps "
                   f"train.batch_size={t.batch_size})")
    algo = cfg.algo
    section = section_of(cfg.algorithm)
    if online:
        seq = [f"data.max_prompt_length (now {cfg.data.max_prompt_length})"]
        sampling = getattr(algo, "sampling", None)
        if sampling is not None and hasattr(sampling, "max_new_tokens"):
            seq.append(f"{section}.sampling.max_new_tokens (now {sampling.max_new_tokens})")
        out.append("lower " + " or ".join(seq))
    else:
        out.append(f"lower data.max_length (now {cfg.data.max_length})")
    shape = dict(mesh.shape)
    if shape.get("data", 1) > 1 or mesh.devices.size < jax.device_count():
        more = "mesh.data" if shape.get("data", 1) > 1 else "idle devices"
        out.append(f"raise mesh.fsdp (now {shape.get('fsdp', 1)}; from {more}: shards parameters and "
                   "optimizer state over more devices)")
    if cfg.model.remat in (False, "attention"):
        out.append("set model.remat=dots (keep only the matmul outputs) or true (recompute whole blocks)")
    elif cfg.model.remat == "dots":
        out.append("set model.remat=true")
    if hasattr(algo, "chunk_size") and getattr(algo, "chunk_size") is None:
        out.append(f"set {section}.chunk_size (e.g. 128)")
    if cfg.algorithm == "dpo" and getattr(algo, "reference_mode", lambda: None)() == "model":
        out.append("set dpo.reference=precomputed (no reference model in memory)")
    return out


def too_big_message(est: Estimate, cfg, mesh, online: bool) -> str:
    """The one-line error for a step that does not fit."""
    return (f"the train step needs about {fmt_bytes(est.total)} per device but {fmt_bytes(est.limit)} is "
            f"available ({est.limit_source}); to fit: " + "; ".join(knobs(cfg, mesh, online)))


class MemoryCheck:
    """``check(state, batch, frozen)``: estimate once, log one line, raise if it cannot fit.

    Disabled by ``train.preflight: false``. Later calls do nothing (the first batch decides).
    """

    def __init__(self, cfg, job, jit_step):
        self.cfg, self.job, self.jit_step = cfg, job, jit_step
        self.done = not getattr(cfg.train, "preflight", True)
        self.estimate: Estimate | None = None

    def __call__(self, state, batch, frozen) -> Estimate | None:
        if self.done:
            return None
        self.done = True
        self.estimate = est = estimate(self.jit_step, state, batch, frozen, self.job.mesh, self.cfg)
        if est.arguments == 0 and est.temp == 0:  # no memory analysis on this backend
            return est
        from jaxalign.parallel import distributed

        # Every process decides alike (their devices' limits could differ): none trains alone.
        if distributed.any_process(not est.fits):
            raise JaxalignError(too_big_message(est, self.cfg, self.job.mesh, self.job.experience is not None)
                                if not est.fits else "another process's devices cannot fit the train step")
        if not self.cfg.quiet and distributed.is_main():  # tqdm.write: the online check runs while the progress bar is up
            from tqdm.auto import tqdm

            tqdm.write(est.summary(), file=sys.stderr)
        return est


def plan_job(cfg, job) -> Estimate:
    """Estimate ``job``'s train step memory per device as training would compile it
    (``jaxalign plan``); nothing is trained or written. An online job samples one experience
    batch from its first prompts, since the train batch's shape comes from sampling."""
    from jaxalign.train.compile import compile_step, init_state

    state = init_state(job, cfg.seed)
    jit_step = compile_step(job, state)
    if job.experience is None:
        batch = longest_batch(job.train_batches)
    else:
        batch, _ = job.experience(state, next(job.train_batches))
    est = estimate(jit_step, state, batch, job.frozen, job.mesh, cfg)
    est.message = None if est.fits else too_big_message(est, cfg, job.mesh, job.experience is not None)
    return est
