"""The environment of the test session and of every subprocess a test starts.

``tests/conftest.py`` calls :func:`configure_session` before anything imports jax: the pytest
process gets 8 simulated CPU devices (unless the caller chose otherwise), the XLA:CPU collective
timeouts raised and its backend optimisation off (where the installed jaxlib knows the flags),
and one JAX persistent compilation cache for the whole session. Tests start subprocesses with
``env=subprocess_env(...)``, which inherits all of that and sets the subprocess's own number of
simulated devices.

Why XLA:CPU's backend optimisation is off (``--xla_backend_optimization_level=0``, unless the
caller's XLA_FLAGS set a level): the suite compiles hundreds of small programs, and LLVM's
optimisation of their fused loops costs more compile time than it saves at run time (the
matmuls run in precompiled library kernels either way). Measured on the 2-core machine: the tiny
SFT train step compiles in 3.9 s instead of 7.6 s; tests/algorithms/test_ift.py took 199 s
instead of 259 s; the real-weights SmolLM2 parity tests (logits, 60 greedy tokens against
transformers) pass and take as long (211 vs 217 s). It changes code generation, not the
computation: the parity and bit-exact tests run under it.

Why the timeouts: on XLA:CPU an all-reduce over N simulated devices is a barrier of N threads of
the one process, and a thread that does not arrive within
``xla_cpu_collective_call_terminate_timeout_seconds`` (40 s by default) aborts the process
("Termination timeout for all reduce ... Expected 8 threads to join the rendezvous, but only 7
arrived"). On a 2-core machine shared with other jobs, 8 device threads per process (plus an
8-thread intra-op pool per process) can starve one of them that long. Subprocess tests therefore
run on 2 devices unless the device count is what they test, and the deadline is raised well above
the tests' own subprocess timeouts, so that a truly stuck run fails the test with its output
instead of aborting.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEVICE_FLAG = "--xla_force_host_platform_device_count"
SESSION_DEVICES = 8
# Simulated devices of a subprocess whose test is not about the device count.
SUBPROCESS_DEVICES = 2
# How long a test waits for a training subprocess before calling it hung. A hang guard, never a
# speed check: a tiny run takes seconds alone and minutes on 2 cores shared with other suites
# (three suites side by side, load ~12, took a PPO run past 300 s), so it is far above both.
HANG_S = 900
# XLA:CPU collective deadlines (defaults 20 s warning, 40 s abort): above every subprocess
# timeout of the tests (<= 300 s), so a stuck collective is reported by the test, not by abort().
# (xla_cpu_collective_timeout_seconds, the timeout of the collective operation itself, is 30 min
# by default and is left alone.)
COLLECTIVE_FLAGS = ("--xla_cpu_collective_call_warn_stuck_timeout_seconds=120",
                    "--xla_cpu_collective_call_terminate_timeout_seconds=900")
# XLA:CPU's LLVM optimisation off for the session (module docstring).
COMPILE_FLAGS = ("--xla_backend_optimization_level=0",)
CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"
_owned_cache_dir: str | None = None


def with_devices(flags: str, n: int) -> str:
    """``flags`` (an XLA_FLAGS value) with the simulated CPU device count set to ``n``."""
    kept = [f for f in flags.split() if not f.startswith(DEVICE_FLAG + "=")]
    return " ".join([f"{DEVICE_FLAG}={n}", *kept])


def _flag_names(flags: str) -> set[str]:
    return {f.split("=", 1)[0] for f in flags.split()}


def xla_flags_supported(flags: tuple[str, ...], cache=None) -> bool:
    """Whether this jaxlib knows every one of ``flags`` (an XLA flag it does not know aborts the
    process at backend start, so they are tried once in a child process; the answer is kept in
    pytest's cache per jaxlib version and interpreter)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        jaxlib = version("jaxlib")
    except PackageNotFoundError:
        return False
    key = f"jaxalign/xla_flags/{sys.executable}/{jaxlib}/{','.join(flags)}"
    if cache is not None:
        known = cache.get(key, None)
        if known is not None:
            return bool(known)
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join((f"{DEVICE_FLAG}=1", *flags)))
    env.pop(CACHE_ENV, None)
    try:
        ok = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], env=env, timeout=300,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
    except subprocess.TimeoutExpired:
        return False  # not cached: try again next session
    if cache is not None:
        cache.set(key, ok)
    return ok


def session_xla_flags(flags: str, supported) -> str:
    """The session's XLA_FLAGS from the caller's ``flags``: :data:`SESSION_DEVICES` simulated
    devices unless ``flags`` set a count, then each group of :data:`COLLECTIVE_FLAGS` and
    :data:`COMPILE_FLAGS` that ``flags`` does not set already, where ``supported(group)``."""
    if DEVICE_FLAG not in flags:
        flags = with_devices(flags, SESSION_DEVICES)
    for group in (COLLECTIVE_FLAGS, COMPILE_FLAGS):
        missing = tuple(f for f in group if f.split("=", 1)[0] not in _flag_names(flags))
        if missing and supported(missing):
            flags = " ".join([flags, *missing])
    return flags.strip()


def configure_session(cache=None) -> None:
    """Set this process's environment for the session (see the module docstring). Idempotent, and
    a no-op where an outer process (a pytest-xdist controller) already did it: its workers share
    its device flags and compilation cache."""
    global _owned_cache_dir
    os.environ["XLA_FLAGS"] = session_xla_flags(os.environ.get("XLA_FLAGS", ""),
                                                lambda group: xla_flags_supported(group, cache))
    if not os.environ.get(CACHE_ENV):
        # One cache per session, shared with the subprocesses and xdist workers: a program that
        # several tests (or runs) compile is compiled once. Every program is cached (a tiny
        # compile is cheap to store; the suite compiles the same small programs again and again).
        _owned_cache_dir = tempfile.mkdtemp(prefix="jaxalign-tests-jax-cache-")
        os.environ[CACHE_ENV] = _owned_cache_dir
        os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
        os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    if "jax" in sys.modules:  # too late for the environment variables alone
        import jax

        jax.config.update("jax_compilation_cache_dir", os.environ[CACHE_ENV])
        jax.config.update("jax_persistent_cache_min_compile_time_secs",
                          float(os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", 1.0)))
        jax.config.update("jax_persistent_cache_min_entry_size_bytes",
                          int(os.environ.get("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", 0)))


def cleanup_session() -> None:
    """Remove the session's compilation cache (only the process that made it does)."""
    global _owned_cache_dir
    if _owned_cache_dir is not None:
        shutil.rmtree(_owned_cache_dir, ignore_errors=True)
        _owned_cache_dir = None


def release_memory() -> None:
    """Give back what a finished test module held: garbage, JAX's compiled-program and tracing
    caches (a later module that needs a program again reads it from the session's persistent
    compilation cache), and the C heap's free pages (glibc keeps freed memory otherwise).
    Without it a pytest-xdist worker only grows, to ~5 GiB by the end of the suite, and three
    suites side by side (6 workers) outgrow a 24 GiB machine."""
    import ctypes
    import gc

    gc.collect()
    if "jax" in sys.modules:
        sys.modules["jax"].clear_caches()
        gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl): nothing to trim
            pass


def subprocess_env(devices: int = SUBPROCESS_DEVICES, **extra: str) -> dict[str, str]:
    """The environment for a subprocess of a test: this session's (collective timeouts,
    compilation cache), ``devices`` simulated CPU devices, unbuffered output, this checkout first
    on the import path (``python -m jaxalign.cli`` runs this tree's code), and ``extra``."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = with_devices(env.get("XLA_FLAGS", ""), devices)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONFAULTHANDLER"] = "1"  # run() below asks a stuck child for its Python stacks
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


def run(cmd, *, timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)``, except
    that a child still running at ``timeout`` is first sent SIGABRT (with ``PYTHONFAULTHANDLER``
    set, as :func:`subprocess_env` does, Python prints every thread's stack) and the test fails
    with that stack and the child's output, instead of a bare ``TimeoutExpired``: a hang is
    diagnosed from the CI log alone."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        raise AssertionError(f"{cmd[:4]} still running after {timeout} s; its stderr (stacks at the "
                             f"timeout last):\n{err[-6000:]}\nstdout:\n{out[-2000:]}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
