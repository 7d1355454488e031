"""`make bench`: every bench script in turn, each in its own process (one TF import each).

Run on a quiet machine; each script prints its own figures and side-by-side ratios (run one script
alone, with --help, for its options). ``--quick`` runs each one's short form: every row, figures only
indicative (a check that the benches work).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

# Script -> its arguments for a quick run.
BENCHES = {
    "bench_scaler.py": ["--quick"],
    "bench_model.py": ["--quick"],
    "bench_inference_protocol.py": ["--requests", "300", "--seconds", "3"],
    "bench_serving.py": ["--quick"],
    "bench_envoy.py": ["--quick"],
    "bench_store.py": ["--quick"],
    "bench_datasets.py": ["--quick"],
}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="every script's short form")
    parser.add_argument("only", nargs="*", help="run only these scripts (e.g. bench_serving.py)")
    args = parser.parse_args()
    here = Path(__file__).resolve().parent
    unknown = [name for name in args.only if name not in BENCHES]
    if unknown:
        parser.error(f"unknown bench {unknown}; expected some of {list(BENCHES)}")
    failed = []
    for name, quick_args in BENCHES.items():
        if args.only and name not in args.only:
            continue
        print(f"\n===== {name} =====", flush=True)
        started = time.monotonic()
        code = subprocess.call([sys.executable, str(here / name), *(quick_args if args.quick else [])])
        print(f"===== {name}: exit {code} after {time.monotonic() - started:.0f}s =====", flush=True)
        if code != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
