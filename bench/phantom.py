"""Benchmark: time and peak memory to write a 4-phase, 300-slice, 512 x 512 CECT phantom.

Run: PYTHONPATH=. python bench/phantom.py [OUT_DIR]   (not part of the test suite)
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

from hccnode.phantom import StudySpec, generate


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="phantom-bench-"))
    spec = StudySpec(kind="cect", seed=1, slices=300, matrix=512, slice_thickness_mm=1.0, progress=True)
    t0 = time.perf_counter()
    truth = generate(spec, out)
    dt = time.perf_counter() - t0
    n = sum(s["n_instances"] for s in truth.data["studies"][0]["series"])
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # ru_maxrss is KiB on Linux
    print(f"phantom bench: {n} images (4 x 300 x 512^2) in {dt:.1f} s ({n / dt:.1f} img/s), "
          f"peak RSS {peak_mb:.0f} MiB, output {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
