"""`make bench`: every bench script in turn, each in its own process (one TF import each).

Run on a quiet machine; each script prints its own figures and side-by-side ratios (run one script
alone, with --help, for its options).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

BENCHES = ("bench_scaler.py", "bench_model.py", "bench_inference_protocol.py")


def main() -> int:
    here = Path(__file__).resolve().parent
    failed = []
    for name in BENCHES:
        print(f"\n===== {name} =====", flush=True)
        started = time.monotonic()
        code = subprocess.call([sys.executable, str(here / name)])
        print(f"===== {name}: exit {code} after {time.monotonic() - started:.0f}s =====", flush=True)
        if code != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
