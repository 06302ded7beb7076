"""``jaxalign plan``: the memory plan of a whole run, per device, from abstract shapes only.

The job is built as training builds it, but inside :func:`jaxalign.models.abstract.abstract_build`:
every model (policy, reference, LoRA adapters) is a tree of ``jax.ShapeDtypeStruct`` carrying
the NamedSharding its logical axes give on the run's mesh, and the experience phase records what
it would sample instead of sampling. Each jitted function the loop runs is then lowered on those
shapes and compiled (``jax.jit(f).lower(*abstract).compile().memory_analysis()``): nothing the
size of a model is allocated, so an 8B model plans on a laptop, and a mesh of ``--devices N``
CPU devices stands in for ``N`` accelerators.

Parts (bytes per device):

* resident state ``R``, alive for the whole run: the policy's parameters, its optimizer state
  and the rest of the train state (a PPO critic is part of the trainable tree), the frozen
  inputs of the train step (online DPO's reference, a LoRA base), a reference kept for the
  experience's log-probs (GRPO/PPO with ``kl_coef > 0``);
* each phase ``p`` of a step adds ``X_p``: its compiled program's arguments that are not
  resident state, plus outputs − aliased + temporaries + generated code (XLA's buffer
  assignment of that program):

  - ``sampling``: :func:`jaxalign.rollout.sampler.lower_generate` (prefill and the KV cache of
    ``batch × samples`` rows of ``bucket(max_prompt_length) + max_new_tokens`` positions, the
    decode loop);
  - ``reference forward``: the reference's log-probs over the experience rows;
  - ``train step``: the compiled step (as the offline preflight compiles it) on the
    experience's train batch.

The peak is ``R + max_p X_p``: phases run one after another, and what one phase allocates
beyond the resident state is freed before the next (the experience rows that live across
phases are arguments of the later ones, so they are counted there). Offline algorithms have one
phase, the train step, whose peak equals the preflight's ``arguments + outputs − aliased +
temporaries + code``.

Not planned: a reward *model*'s parameters and forward (a function reward has none); held-out
evaluation (it reuses the training sampler's program when the shapes agree).
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from jaxalign.errors import JaxalignError
from jaxalign.train.preflight import (Estimate, device_limit, estimate, fmt_bytes, knobs, longest_batch,
                                      per_device_bytes)


@dataclasses.dataclass
class Phase:
    """One compiled program of a step: its bytes beyond the resident state (``extra``), as
    ``arguments`` (non-resident ones), ``outputs`` (less aliased), ``temp`` and ``code``."""

    name: str
    arguments: int
    outputs: int
    temp: int
    code: int
    kv_cache: int | None = None  # sampling: the KV cache counted from the shapes (part of temp)

    @property
    def extra(self) -> int:
        return self.arguments + self.outputs + self.temp + self.code


@dataclasses.dataclass
class Plan:
    """The whole-run memory plan per device (see the module docstring)."""

    parts: list  # [(name, bytes)] of the resident state
    phases: list  # [Phase]
    step: Estimate
    limit: int | None
    limit_source: str
    devices: int
    seconds: float = 0.0
    notes: list = dataclasses.field(default_factory=list)
    message: str | None = None

    @property
    def resident(self) -> int:
        return sum(n for _, n in self.parts)

    @property
    def peak_phase(self) -> Phase:
        return max(self.phases, key=lambda p: p.extra)

    @property
    def peak(self) -> int:
        return self.resident + self.peak_phase.extra

    @property
    def fits(self) -> bool:
        return self.limit is None or self.peak <= self.limit

    def largest(self) -> tuple[str, int]:
        """The largest single part: a resident part or a phase's own bytes."""
        rows = list(self.parts) + [(f"{p.name} (its temporaries and buffers)", p.extra) for p in self.phases]
        return max(rows, key=lambda r: r[1])

    def to_dict(self) -> dict:
        d = self.step.to_dict()
        d.update(parts=dict(self.parts), resident=self.resident, peak=self.peak, peak_phase=self.peak_phase.name,
                 phases={p.name: dict(dataclasses.asdict(p), extra=p.extra) for p in self.phases},
                 limit=self.limit, limit_source=self.limit_source, fits=self.fits, devices=self.devices,
                 seconds=round(self.seconds, 1), notes=list(self.notes))
        return d

    def table(self) -> str:
        """The per-device breakdown ``jaxalign plan`` prints."""
        rows = [(name, n) for name, n in self.parts]
        rows.append(("resident state", self.resident))
        for p in self.phases:
            rows.append((f"phase {p.name}: + {fmt_bytes(p.arguments)} args, {fmt_bytes(p.outputs)} out, "
                         f"{fmt_bytes(p.temp)} temp", p.extra))
            if p.kv_cache is not None:
                rows.append(("  of which the KV cache (counted from the shapes)", p.kv_cache))
        rows.append((f"peak (resident + {self.peak_phase.name})", self.peak))
        width = max(len(r[0]) for r in rows)
        lines = [f"memory plan per device ({self.devices} device(s), abstract: nothing allocated; "
                 f"{self.seconds:.1f} s)"]
        lines += [f"  {name:<{width}}  {fmt_bytes(n):>11}" for name, n in rows]
        limit = "unknown" if self.limit is None else fmt_bytes(self.limit)
        lines.append(f"  {'device limit':<{width}}  {limit:>11}  ({self.limit_source})")
        if self.limit is None:
            lines.append("  cannot tell whether it fits (no device memory limit known)")
        elif self.fits:
            lines.append(f"  fits ({fmt_bytes(self.limit - self.peak)} to spare)")
        else:
            lines.append(f"  does NOT fit ({fmt_bytes(self.peak - self.limit)} over)")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _memory(compiled) -> dict:
    ma = compiled.memory_analysis()
    if isinstance(ma, (list, tuple)):
        ma = ma[0]
    names = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes",
             "generated_code_size_in_bytes")
    return {n: int(getattr(ma, n, 0) or 0) if ma is not None else 0 for n in names}


def _phase(name: str, compiled, resident_args: int) -> Phase:
    m = _memory(compiled)
    return Phase(name, max(m["argument_size_in_bytes"] - resident_args, 0),
                 m["output_size_in_bytes"] - m["alias_size_in_bytes"], m["temp_size_in_bytes"],
                 m["generated_code_size_in_bytes"])


def abstract_state(job, seed: int = 0):
    """The job's initial :class:`~jaxalign.train.state.TrainState` as ShapeDtypeStructs on the
    shardings :func:`jaxalign.train.compile.init_state` would place it on (nothing allocated)."""
    from jaxalign.models.abstract import with_shardings
    from jaxalign.train.compile import state_shardings
    from jaxalign.train.state import TrainState

    st = jax.eval_shape(lambda p: TrainState.create(p, job.tx, seed, job.extras), job.params)
    st = st.replace(params=job.params)  # eval_shape drops the shardings the params carry
    return with_shardings(st, state_shardings(st, job.mesh, job.tx))


def _worst_prompts(batch, length: int):
    """The prompt batch (or a dict holding one under ``prompts``) with prompts of ``length``
    tokens: the longest the data allows (``data.max_prompt_length``)."""
    if isinstance(batch, dict) and "prompt_ids" in batch:
        b = np.asarray(batch["prompt_ids"]).shape[0]
        return dict(batch, prompt_ids=np.zeros((b, length), np.int32), prompt_mask=np.ones((b, length), np.int32))
    if isinstance(batch, dict) and "prompts" in batch:
        return dict(batch, prompts=_worst_prompts(batch["prompts"], length))
    return batch


def kv_cache_bytes(graphdef, params, prompt_shape: tuple, num_samples: int, max_new_tokens: int, mesh) -> int:
    """Per-device bytes of the sampler's KV cache, counted from the shapes: keys and values of
    every layer for ``rows x (bucket(P) + max_new_tokens) x kv_heads x head_dim`` in the cache
    dtype, ``rows = B x num_samples`` (``B`` padded to the batch shards), split as the sampler
    constrains it (rows over the batch axes, heads over ``tensor``)."""
    import flax.nnx as nnx

    from jaxalign import parallel as shd
    from jaxalign.models.kv_cache import cache_dtype
    from jaxalign.rollout.arguments import prompt_bucket_length

    mc = nnx.merge(graphdef, params).config
    shards = shd.batch_shards(mesh)
    rows = -(-prompt_shape[0] // shards) * shards * num_samples
    shape = (rows, mc.num_key_value_heads, prompt_bucket_length(prompt_shape[1]) + max_new_tokens, mc.head_dim)
    sharding = jax.sharding.NamedSharding(mesh, shd.logical_to_spec(("batch", "kv_heads", "seq", None), shape, mesh))
    one = jax.ShapeDtypeStruct(shape, cache_dtype(mc.jnp_dtype), sharding=sharding)
    return 2 * mc.num_hidden_layers * per_device_bytes(one)


def _sampling_phases(record, mesh) -> list[Phase]:
    """The sampler and reference-forward phases of the first recorded experience."""
    from jaxalign import parallel as shd
    from jaxalign.rollout.sampler import lower_generate

    maker, params, prompt_shape, width = record.samplings[0]
    s = maker.sampling
    gen = lower_generate(maker.graphdef, params, prompt_shape, max_new_tokens=s.max_new_tokens,
                         temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, n_eos=len(maker.eos),
                         num_samples=maker.num_samples, mesh=mesh).compile()
    phases = [_phase("sampling", gen, per_device_bytes(params))]
    phases[0].kv_cache = kv_cache_bytes(maker.graphdef, params, prompt_shape, maker.num_samples, s.max_new_tokens,
                                         mesh)
    if maker.ref_logps is not None:
        rows = prompt_shape[0] * maker.num_samples
        tok = jax.ShapeDtypeStruct((rows, width), np.int32, sharding=shd.batch_sharding(mesh, 2, rows=rows))
        ref = maker.ref_logps.lower(maker.ref_params, tok, tok, tok).compile()  # ids, attention, completion
        phases.append(_phase("reference forward", ref, per_device_bytes(maker.ref_params)))
    return phases


def plan_config(cfg) -> Plan:
    """The memory plan of run config ``cfg`` (see the module docstring); nothing is trained,
    written or allocated beyond the data's token rows."""
    from jaxalign import algorithms
    from jaxalign.models.abstract import abstract_build
    from jaxalign.parallel.rules import axis_rules
    from jaxalign.train.compile import compile_step

    t0 = time.perf_counter()
    with abstract_build() as record, axis_rules(cfg.mesh.logical_axis_rules):
        job = algorithms.build_job(cfg)
        state = abstract_state(job, cfg.seed)
        jit_step = compile_step(job, state)
        online = job.experience is not None
        if not online:
            batch = longest_batch(job.train_batches)
        else:
            prompts = _worst_prompts(next(job.train_batches), cfg.data.max_prompt_length)
            rng = jax.random.key_data(jax.random.key(cfg.seed))  # sample_key reads it: a real key
            batch, _ = job.experience(state.replace(rng=rng), prompts)
            batch = jax.tree.map(np.asarray, batch)  # placed on the batch shardings, as the sampler's rows are
        step = estimate(jit_step, state, batch, job.frozen, job.mesh, cfg)
        phases = _sampling_phases(record, job.mesh) if online and record.samplings else []
    parts = _parts(job, state, step, record)
    phases.append(Phase("train step", step.arguments - step.params - step.opt_state - step.other_state - step.frozen,
                        step.outputs - step.aliased, step.temp, step.code))
    limit, source = device_limit(cfg, job.mesh)
    plan = Plan(parts, phases, step, limit, source, job.mesh.devices.size, notes=list(record.notes))
    if online and _reward_is_model(cfg):
        plan.notes.append("the reward model's parameters and forward are not in this plan")
    if cfg.model.lora is not None:
        plan.notes.append(_lora_note(job))
    plan.seconds = time.perf_counter() - t0
    plan.message = None if plan.fits else too_big_message(plan, cfg, job.mesh, online)
    return plan


def _parts(job, state, step: Estimate, record) -> list:
    lora = job.frozen if isinstance(job.frozen, tuple) and len(job.frozen) == 2 and _lora_job(job) else None
    parts = [("trainable parameters" + (" (LoRA adapters)" if lora else ""), step.params),
             ("optimizer state", step.opt_state), ("other train state", step.other_state)]
    if lora:
        base, inner = lora
        parts.append(("frozen base (LoRA; the reference when it is the base)", per_device_bytes(base)))
        if inner is not None:
            parts.append(("frozen inputs of the step (reference)", per_device_bytes(inner)))
    elif job.frozen is not None:
        parts.append(("frozen inputs of the step (reference)", step.frozen))
    if record.samplings:
        maker = record.samplings[0][0]
        # With LoRA the experience's reference is the frozen base itself (counted above), not a copy.
        if maker.ref_params is not None and not (lora and _same_arrays(maker.ref_params, lora[0])):
            parts.append(("reference for the experience's log-probs", per_device_bytes(maker.ref_params)))
    return parts


def _lora_job(job) -> bool:
    return job.lora is not None


def _same_arrays(tree, other) -> bool:
    a, b = jax.tree.leaves(tree), jax.tree.leaves(other)
    return bool(a) and len(a) == len(b) and all(x is y for x, y in zip(a, b))


def _lora_note(job) -> str:
    from jaxalign.algorithms.lora import plan_note

    return plan_note(job)


def _reward_is_model(cfg) -> bool:
    reward = getattr(cfg.algo, "reward", None)
    rewards = reward if isinstance(reward, list) else [reward]
    return any(getattr(r, "kind", None) == "model" for r in rewards)


def plan_knobs(cfg, mesh, online: bool, plan: Plan | None = None) -> list[str]:
    """:func:`jaxalign.train.preflight.knobs` and, online, the samples per prompt, the
    minibatch size and (with a reference forward in the plan) the KL coefficient."""
    from jaxalign.algorithms.registry import section_of

    out = knobs(cfg, mesh, online)
    section, algo = section_of(cfg.algorithm), cfg.algo
    if plan is not None and any(p.name == "reference forward" for p in plan.phases):
        key = "beta" if hasattr(algo, "beta") else "kl_coef" if hasattr(algo, "kl_coef") else None
        if key:
            out.append(f"set {section}.{key}=0 (no reference model and no reference forward)")
    if online and hasattr(algo, "num_generations"):
        out.insert(0, f"lower {section}.num_generations (now {algo.num_generations}; rows sampled and "
                      "trained per prompt)")
    if online and getattr(algo, "minibatch_size", None):
        out.append(f"lower {section}.minibatch_size (now {algo.minibatch_size})")
    return out


def too_big_message(plan: Plan, cfg, mesh, online: bool) -> str:
    """The one-line refusal: peak, limit, the largest part, the knobs."""
    name, n = plan.largest()
    return (f"the run needs about {fmt_bytes(plan.peak)} per device at its peak ({plan.peak_phase.name}) but "
            f"{fmt_bytes(plan.limit)} is available ({plan.limit_source}); largest part: {name} {fmt_bytes(n)}; "
            "to fit: " + "; ".join(plan_knobs(cfg, mesh, online, plan)))


def check_before_run(cfg) -> Plan | None:
    """The online preflight: plan ``cfg`` abstractly before anything is built or written and
    refuse (JaxalignError, one line) a run whose peak exceeds the known limit. Skipped with
    ``train.preflight: false``, for offline algorithms (their train step is checked by
    :class:`~jaxalign.train.preflight.MemoryCheck` before anything is written) and when no limit
    is known (a CPU without ``train.device_memory_limit``)."""
    if not getattr(cfg.train, "preflight", True) or cfg.algorithm not in ONLINE:
        return None
    from jaxalign.algorithms.common import mesh_from

    if device_limit(cfg, mesh_from(cfg))[0] is None:
        return None
    plan = plan_config(cfg)
    if not plan.fits:
        raise JaxalignError(plan.message)
    return plan


ONLINE = ("grpo", "rloo", "online_dpo", "raft", "ppo")


def hypothetical_mesh(cfg, devices: int | None, memory) -> None:
    """``jaxalign plan --devices N --device-memory M``: plan on ``N`` devices (the mesh's ``-1``
    axis, else ``mesh.fsdp``, takes what the other axes leave) of ``M`` bytes each."""
    if memory is not None:
        cfg.train.device_memory_limit = memory
    if devices is None:
        return
    m = cfg.mesh
    dims = {"data": m.data, "fsdp": m.fsdp, "tensor": m.tensor}
    free = [k for k, v in dims.items() if v == -1] or ["fsdp"]
    rest = int(np.prod([v for k, v in dims.items() if k != free[0] and v != -1]))
    if devices % rest:
        raise JaxalignError(f"--devices {devices}: not a multiple of the other mesh axes ({rest})")
    setattr(m, free[0], devices // rest)
    for k in free[1:]:
        setattr(m, k, 1)
    if jax.device_count() < devices:
        raise JaxalignError(f"--devices {devices}: only {jax.device_count()} device(s) here; on a CPU, run with "
                            f"XLA_FLAGS=--xla_force_host_platform_device_count={devices} (and JAX_PLATFORMS=cpu "
                            "on a machine with an accelerator)")
