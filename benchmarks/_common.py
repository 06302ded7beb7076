"""Helpers shared by the benchmark scripts: machine description, peak memory, child processes, JSON.

The scripts import this as ``from _common import ...`` (``benchmarks/`` is ``sys.path[0]`` when a
script in it runs).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT_PREFIX = "RESULT "


def cpu_name() -> str:
    """The CPU's model name from ``lscpu`` (or ``platform.processor()``)."""
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict:
    """CPU model, core count, load average, memory and Python version of this machine."""
    info = {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
            "load_average": [round(x, 2) for x in os.getloadavg()]}
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    return info


def peak_rss_bytes() -> int:
    """This process's peak resident set so far, in bytes: Linux's ``VmHWM``, not ``ru_maxrss``,
    which Linux carries over an exec from the process that forked this one (a benchmark started
    by a large parent would report the parent's size); ``ru_maxrss`` where there is no /proc."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) * 1024
    except (OSError, StopIteration):
        scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def peak_rss_gib() -> float:
    """:func:`peak_rss_bytes` in GiB."""
    return peak_rss_bytes() / 2**30


def cpu_seconds() -> float:
    """CPU time (user + system, all threads) this process has used so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime



def trl_step_timer(times: list, cpu: list):
    """A transformers ``TrainerCallback`` appending each optimizer step's wall and process-CPU
    seconds to ``times`` and ``cpu`` (what the TRL sides of every benchmark time)."""
    import time

    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t, self.c = time.perf_counter(), cpu_seconds()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t)
            cpu.append(cpu_seconds() - self.c)

    return StepTimer()

def rss_gib() -> float:
    """This process's current resident set, in GiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def child_env() -> dict:
    """Environment for a benchmark child: this checkout first on PYTHONPATH, one XLA CPU device."""
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # one CPU device, as a user would run it
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def emit_result(res: dict) -> None:
    """Print a child's result as the line :func:`run_child` looks for."""
    print(RESULT_PREFIX + json.dumps(res), flush=True)


def run_child(cmd: list[str], label: str, timeout: float | None = None, exit_on_error: bool = True) -> dict:
    """Run ``cmd`` (a Python child) and return the dict of its last ``RESULT`` line.

    On failure (non-zero exit, no result line, or past ``timeout`` seconds): exit with one line
    naming ``label`` or, without ``exit_on_error``, return ``{"error": ...}`` so that a run of
    several stages goes on to the next one.
    """
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), cwd=ROOT, timeout=timeout)
    except subprocess.TimeoutExpired:
        if exit_on_error:
            raise SystemExit(f"{label} timed out after {timeout:.0f} s") from None
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [x for x in proc.stdout.splitlines() if x.startswith(RESULT_PREFIX)]
    if proc.returncode or not lines:
        if not exit_on_error:
            return {"error": f"exit {proc.returncode}: {proc.stderr[-2500:]}"}
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{label} failed (exit {proc.returncode})")
    return json.loads(lines[-1][len(RESULT_PREFIX):])


# The --remat choices of throughput.py and train_step.py: the config's value or remat_arg's input.
REMAT_CHOICES = ("config", "on", "off", "attention", "dots")


def remat_arg(value: str) -> bool | str:
    """A ``--remat on|off|attention|dots`` option -> ``model.remat``'s value (True, False, or the
    mode's name).
    The torch sides checkpoint whole blocks only for True (``gradient_checkpointing``)."""
    return {"on": True, "off": False}.get(value, value)


def write_json(path: str | Path, obj) -> Path:
    """Write ``obj`` as indented JSON to ``path`` (parents created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1) + "\n")
    return path


def cpu_busy(window_s: float = 3.0) -> float:
    """Fraction of all cores busy (any process, niced included) over ``window_s`` seconds (/proc/stat)."""
    import time

    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + v[4]  # idle + iowait
        return sum(v) - idle, sum(v)

    b0, t0 = sample()
    time.sleep(window_s)
    b1, t1 = sample()
    return (b1 - b0) / max(t1 - t0, 1)


def wait_for_quiet(max_busy: float, max_wait_s: float) -> tuple[float, float]:
    """Wait until the cores are at most ``max_busy`` busy (or ``max_wait_s`` passed).

    Returns (busy fraction last seen, seconds waited). On a shared machine this keeps a
    measurement from starting while another job saturates the cores; it cannot stop one starting
    during the measurement.
    """
    import time

    t0 = time.perf_counter()
    while True:
        busy = cpu_busy()
        waited = time.perf_counter() - t0
        if busy <= max_busy or waited >= max_wait_s:
            return busy, waited
