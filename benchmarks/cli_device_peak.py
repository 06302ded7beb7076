"""``jaxalign`` in this process, then the accelerator's peak memory of the whole run.

    python benchmarks/cli_device_peak.py <jaxalign arguments ...>

Runs ``jaxalign.cli.main`` on the arguments and, on exit, writes the first device's
``memory_stats()`` (``peak_bytes_in_use``, ``bytes_limit``) as ``device_peak.json`` beside the
``--run-dir`` (in its parent directory): the peak of everything the run kept on the device
(sampling, reference and reward forwards, the train step), measured in the process that ran it.
On a CPU (no ``memory_stats``) nothing is written. Used by ``rl_iteration.run(launcher=...)``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from jaxalign.cli import main as jaxalign_main

    code = jaxalign_main(argv)
    import jax

    dev = jax.local_devices()[0]
    stats = dev.memory_stats() if dev.platform != "cpu" else None
    if stats and "--run-dir" in argv:
        out = Path(argv[argv.index("--run-dir") + 1]).parent / "device_peak.json"
        out.write_text(json.dumps({"device": dev.device_kind, "peak_bytes_in_use": stats["peak_bytes_in_use"],
                                   "bytes_limit": stats.get("bytes_limit")}))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
