"""The one training loop: step, eval, log, checkpoint, progress bar, signals, final export.

An algorithm builds a :class:`Job` (its params, frozen inputs, loss and batches); this module
does everything else, identically for every algorithm.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import jax

from jaxalign.config import RunConfig, save_config
from jaxalign.errors import JaxalignError, NoSpaceLeft, is_no_space, warn
from jaxalign.parallel import distributed
from jaxalign.parallel.batch import global_batch
from jaxalign.parallel.rules import axis_rules
from jaxalign.train.checkpoint import Checkpointer
from jaxalign.train.compile import compile_step, init_state
from jaxalign.train import signals
from jaxalign.train.guard import SkipCounter
from jaxalign.train.identity import check_resume, run_identity
from jaxalign.train.job import Job
from jaxalign.train.metrics import MetricsWriter, interval_mean
from jaxalign.train.plots import write_plots
from jaxalign.train.preflight import MemoryCheck, longest_batch
from jaxalign.train.state import make_eval_step


class _NoWriter:
    """Processes other than 0 write no metrics."""

    def write(self, *a, **k):
        pass

    def samples(self, *a, **k):
        pass

    def close(self):
        pass


def _final_dir(run_dir: Path) -> Path:
    final = run_dir / "final"
    # A symlink that stays inside the run dir (check_run_dir): the export goes where it leads.
    return final.resolve() if final.is_symlink() else final


def _remove_partial_exports(final: Path) -> None:
    """Remove what an interrupted export of ``final`` left: ``.final.tmp`` (ours),
    ``..final.tmp.tmp-PID`` (``io.hf.save_hf``'s own sibling of it) and ``.final.old``."""
    for pattern in (f".{final.name}.tmp*", f"..{final.name}.tmp*", f".{final.name}.old"):
        for d in final.parent.glob(pattern):
            shutil.rmtree(d, ignore_errors=True)


def _export(job: Job, params, run_dir: Path, step: int) -> None:
    """``job.export`` into ``run_dir/final``, whole or not at all: written into a temporary
    sibling and swapped in when complete, so a full disk (or a crash) never leaves a final/ with,
    say, the new weights and no tokenizer. A full disk is :class:`NoSpaceLeft`."""
    final = _final_dir(run_dir)
    tmp, old = final.parent / f".{final.name}.tmp", final.parent / f".{final.name}.old"
    _remove_partial_exports(final)
    try:
        job.export(params, tmp)
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)  # frees what the failed export took
        if is_no_space(e):
            raise NoSpaceLeft(final, f"final model not written; the checkpoint of step {step} is saved: "
                                     "free space and rerun to export it") from None
        raise
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def default_run_dir(cfg: RunConfig) -> Path:
    return Path(cfg.run_dir or f"runs/{cfg.algorithm}-{time.strftime('%Y%m%d-%H%M%S')}")


def run(cfg: RunConfig, job: Job, run_dir: str | Path | None = None) -> dict:
    """Train ``job`` to ``job.total_steps``; resume from ``run_dir/checkpoints`` if present.

    Returns a summary dict (final metrics, run dir, steps, wall time, and ``stopped`` /
    ``signal``: whether and by which signal number SIGTERM/SIGINT stopped the run early).
    Runs under the config's logical-axis rules (``mesh.logical_axis_rules``).
    """
    with axis_rules(cfg.mesh.logical_axis_rules):
        return _run(cfg, job, run_dir)


def _run(cfg: RunConfig, job: Job, run_dir: str | Path | None) -> dict:
    from jaxalign.io.outputs import check_output_keys, check_run_dir
    from jaxalign.io.run_lock import RunLock

    run_dir = check_run_dir(run_dir or default_run_dir(cfg))  # nothing written yet
    check_output_keys(cfg, run_dir)
    # One run per run directory: process 0 holds the lock for all processes; all stop together
    # when another run holds it.
    lock, refused = RunLock(run_dir), None
    if distributed.is_main():
        try:
            lock.acquire()
        except JaxalignError as e:
            refused = e
    if distributed.any_process(refused is not None):
        raise refused or JaxalignError(f"run directory {run_dir} is in use by another jaxalign run (process 0 "
                                       "could not lock it)")
    try:
        with signals.cleanup(lock.release):
            return _run_locked(cfg, job, run_dir)
    finally:
        lock.release()


def _run_locked(cfg: RunConfig, job: Job, run_dir: Path) -> dict:
    tcfg = cfg.train
    main = distributed.is_main()  # several processes: only process 0 logs and writes files
    quiet = cfg.quiet or not main
    log = (lambda *a: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))

    from jaxalign.config.report_to import parse_report_to

    report_to = parse_report_to(tcfg.report_to)  # a tracker that is not installed: refused before compiling
    state = init_state(job, cfg.seed)
    jit_step = compile_step(job, state)
    # Memory preflight: compiles the step (the loop reuses it) and refuses a run that cannot fit,
    # before anything is written. Online jobs are checked on their first experience batch below.
    check_memory = MemoryCheck(cfg, job, jit_step)
    if job.experience is None:
        check_memory(state, longest_batch(job.train_batches), job.frozen)
    identity = run_identity(cfg, job.train_batches)
    ckpt = Checkpointer(run_dir / "checkpoints", keep=tcfg.keep_checkpoints)
    try:  # another run's checkpoints are refused; damaged ones fall back to the newest good one
        changed = check_resume(ckpt.newest_meta().get("identity"), identity, run_dir, tcfg.resume_cast,
                               warn if main else log)
        start, state, meta = ckpt.restore_latest_good(state, warn if main else log, needs=("data",))
    except JaxalignError:
        ckpt.close()
        raise
    if main:  # an export a kill interrupted frees its space now (we hold the lock: none is being written)
        _remove_partial_exports(_final_dir(run_dir))
    if start is not None:
        job.train_batches.load_state_dict(meta["data"])
        log(f"resumed from {run_dir / 'checkpoints'} at step {start}"
            + (f" (changed: {'; '.join(changed)})" if changed else ""))

    def save_config_once():
        # Only once a step succeeded (or there was none to run): a run that fails at its first
        # step (a bad reward, out of memory) leaves the previous config.yaml as it was.
        nonlocal config_saved
        if main and not config_saved:
            save_config(cfg, run_dir / "config.yaml")
        config_saved = True

    config_saved = False
    writer = MetricsWriter(run_dir, resume_step=start, rerun=ckpt.rerun_hint, report_to=report_to,
                           config=cfg.to_dict()) if main else _NoWriter()

    def replot():
        # Live curves: rewritten at every eval and checkpoint, not only at the end.
        return write_plots(run_dir) if tcfg.plots and main else None

    def log_samples(step):
        # Online jobs: the sample completions (with rewards) of the eval (or step) just done.
        if job.samples is not None and tcfg.log_samples:
            writer.samples(step, job.samples()[:tcfg.log_samples])

    jit_eval = jax.jit(make_eval_step(job.eval_loss_fn or job.loss_fn, 1)) if job.eval_batches else None
    if job.evaluate is not None:
        jit_eval = True  # evaluate() calls the job's own hook

    evaluated = {}

    def evaluate(step):
        if step in evaluated:  # eval_every already ran at this step
            return evaluated[step]
        if job.evaluate is not None:
            evaluated[step] = {k: float(v) for k, v in job.evaluate(state.params).items()}
            writer.write(step, evaluated[step], prefix="eval/")
            log_samples(step)
            return evaluated[step]
        sums, n = {}, 0
        for i, b in enumerate(job.eval_batches()):
            if tcfg.eval_batches is not None and i >= tcfg.eval_batches:
                break
            m = jax.device_get(jit_eval(state, global_batch(b, job.mesh), job.frozen))
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            n += 1
        if n:
            writer.write(step, {k: v / n for k, v in sums.items()}, prefix="eval/")
        evaluated[step] = {k: v / max(n, 1) for k, v in sums.items()}
        return evaluated[step]

    first = 0 if start is None else start
    last_metrics: dict = {}
    t_start = t_last = time.perf_counter()
    last_logged, tokens_since = first, 0
    # The metrics of each step since the last log (device values, fetched at the log step so
    # that no step waits for the host); logged as their mean over the interval.
    pending: list = []
    # Counts every skipped (non-finite) step without a per-step host sync; raises after
    # train.max_nonfinite_steps in a row. A resumed default step continues its streak.
    skips = SkipCounter(tcfg.max_nonfinite_steps, int(state.bad_steps) if job.step_fn is None else 0,
                        eager=jax.process_count() == 1)
    pbar = None
    if not quiet:
        from tqdm.auto import tqdm

        pbar = tqdm(total=job.total_steps, initial=first, desc=cfg.algorithm, unit="step",
                    dynamic_ncols=True, file=sys.stderr)
    stopped = False
    if jit_eval and tcfg.eval_at_start and first == 0:
        ev = evaluate(0)
        if pbar is not None and ev:
            pbar.write("step 0: " + ", ".join(f"eval/{k}={v:.4f}" for k, v in ev.items()))
        replot()
    with signals.StopFlag() as flag, ckpt.finish_on_error():
        step = first
        for step in range(first, job.total_steps):
            try:
                batch = next(job.train_batches)
            except StopIteration:
                raise JaxalignError("the training data ran out before train.steps; "
                                    "lower train.steps or raise train.epochs") from None
            exp_metrics = {}
            if job.experience is not None:
                batch, exp_metrics = job.experience(state, batch)
            tokens_since += job.count_tokens(batch)
            batch = global_batch(batch, job.mesh)
            if job.experience is not None:
                check_memory(state, batch, job.frozen)  # once: the first experience batch
            state, metrics = jit_step(state, batch, job.frozen)
            skips.add(step + 1, metrics.get("skipped"))
            pending.append((metrics, exp_metrics))
            save_config_once()
            if (step + 1) % max(tcfg.log_every, 1) == 0 or step + 1 == job.total_steps:
                steps_metrics = jax.device_get(pending)  # waits for the steps: timings below are real
                pending = []
                tokens_since = distributed.sum_over_processes(tokens_since)  # each counted its rows
                now = time.perf_counter()
                dt = (now - t_last) / (step + 1 - last_logged)
                row = interval_mean([{**{k: float(v) for k, v in m.items()}, **e} for m, e in steps_metrics])
                skips.flush(check=False)  # count first: the row is written, then the run may stop
                row.update(step_time=dt, tokens_per_s=tokens_since / (now - t_last), skipped_steps=skips.total)
                t_last, last_logged, tokens_since = now, step + 1, 0
                writer.write(step + 1, row)
                skips.check()
                last_metrics = row
                if pbar is not None:
                    extra = {"reward": f"{row['reward/mean']:.3f}"} if "reward/mean" in row else {}
                    pbar.set_postfix(loss=f"{row['loss']:.4f}", tok_s=f"{row['tokens_per_s']:.0f}", **extra)
            if pbar is not None:
                pbar.update(1)
            eval_now = tcfg.eval_every and (step + 1) % tcfg.eval_every == 0
            if eval_now and jit_eval:
                ev = evaluate(step + 1)
                if pbar is not None and ev:
                    pbar.write(f"step {step + 1}: " + ", ".join(f"eval/{k}={v:.4f}" for k, v in ev.items()))
            elif eval_now:
                log_samples(step + 1)  # no held-out prompts: the samples of this step's experience
            # Several processes save and stop together, whichever of them got the signal.
            stop = distributed.any_process(flag.stop)
            save_now = (tcfg.save_every and (step + 1) % tcfg.save_every == 0) or stop
            if save_now:
                skips.flush()
                ckpt.save(step + 1, state, {"data": job.train_batches.state_dict(), "step": step + 1,
                                            "identity": identity})
            if eval_now or save_now:
                replot()
            if stop:
                stopped = True
                log(f"\nstopped by signal at step {step + 1}; checkpoint saved, rerun to resume")
                break
        final_step = int(jax.device_get(state.step))
        skips.flush()
        # Still under the signal handler: SIGTERM during this save cannot lose the run's progress.
        if not stopped and ckpt.latest_step() != final_step:
            ckpt.save(final_step, state, {"data": job.train_batches.state_dict(), "step": final_step,
                                          "identity": identity})
        save_config_once()
        # A signal during the final save (on any process): skip eval and export.
        if not stopped and distributed.any_process(flag.stop):
            stopped = True
            log(f"\nstopped by signal after step {final_step}; checkpoint saved, rerun to export")
    signum = flag.signum if stopped else None
    if pbar is not None:
        pbar.close()
    if not stopped:
        if jit_eval:
            last_metrics.update({f"eval/{k}": v for k, v in evaluate(final_step).items()})
    ckpt.close()
    writer.close()
    plot = replot()
    if not stopped and tcfg.save_final and job.export is not None:
        params = distributed.to_host(state.params) if jax.process_count() > 1 else state.params
        if main:
            _export(job, params, run_dir, final_step)
        log(f"final model (Hugging Face format): {run_dir / 'final'}")
    if plot is not None:
        log(f"plots: {plot}")
    if skips.total:
        log(f"{skips.total} step(s) skipped for a non-finite loss or gradient (metric 'skipped')")
    return {"run_dir": str(run_dir), "steps": final_step, "stopped": stopped, "signal": signum,
            "skipped": skips.total,
            "wall_s": time.perf_counter() - t_start, "metrics": last_metrics, "state": state}
