"""Peak memory of :func:`talkhead.audio.logfbank` for short and long speech (10 s, 10 min, 1 h).

Each length runs in a fresh subprocess, so ``ru_maxrss`` (the process's peak resident set size) is
that run's own. Printed per length: RSS before the call (Python + numpy + the float32 input of
``N`` samples at 16 kHz), the peak during the call, the difference, and the wall time.

Usage::

    PYTHONPATH=. python benchmarks/logfbank_memory.py            # 10 s, 600 s, 3600 s
    PYTHONPATH=. python benchmarks/logfbank_memory.py 10 3600
"""
from __future__ import annotations

import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import numpy as np
from talkhead.audio import logfbank

seconds = float(sys.argv[1])
rng = np.random.default_rng(0)
x = np.empty(int(seconds * 16000), np.float32)  # like load_speech's output; filled in blocks so that
for a in range(0, x.shape[0], 1 << 20):          # making it does not raise the peak itself
    x[a:a + (1 << 20)] = 0.1 * rng.standard_normal(min(1 << 20, x.shape[0] - a), dtype=np.float32)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB (Linux)
t0 = time.perf_counter()
out = logfbank(x)
elapsed = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": seconds, "frames": out.shape[0], "rss_before_mib": round(before, 1),
                  "rss_peak_mib": round(peak, 1), "delta_mib": round(peak - before, 1),
                  "wall_s": round(elapsed, 2)}))
"""


def main(argv: list[str]) -> None:
    lengths = [float(a) for a in argv] or [10.0, 600.0, 3600.0]
    print(f"{'audio':>8} {'frames':>8} {'RSS before':>11} {'RSS peak':>9} {'delta':>8} {'time':>7}")
    for seconds in lengths:
        res = json.loads(subprocess.run([sys.executable, "-c", CHILD, str(seconds)], check=True,
                                        capture_output=True, text=True).stdout)
        print(f"{res['seconds']:>7.0f}s {res['frames']:>8} {res['rss_before_mib']:>8.1f} MiB "
              f"{res['rss_peak_mib']:>6.1f} MiB {res['delta_mib']:>5.1f} MiB {res['wall_s']:>6.2f}s")


if __name__ == "__main__":
    main(sys.argv[1:])
