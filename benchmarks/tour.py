"""Benchmark: wall time of `bayesgen tour` (all five models, run folders, diagnostics, HTML report).

Goal (issue 8): under 3 minutes on a 2-core CPU with no GPU. Runs the tour in this process
(as the CLI does) on the chosen device and records each model's time and the total, the
machine and the package versions in benchmarks/results/tour_<device>.json.

Run:  python benchmarks/tour.py [--device cpu|cuda] [--out /tmp/tour-bench] [--results benchmarks/results]
      [--tag h200]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

from bayesgen.runs.folder import package_versions
from bayesgen.tour import run_tour


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="/tmp/tour-bench")
    parser.add_argument("--results", default=str(Path(__file__).parent / "results"), help="folder for the JSON")
    parser.add_argument("--tag", default="", help="suffix for the JSON file name (e.g. the machine)")
    args = parser.parse_args()
    result = run_tour(args.out, device=args.device, progress=False, overwrite=True)
    record = {
        "device": args.device,
        "seconds": result.seconds,
        "errors": result.errors,
        "goal_seconds": 180,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor()},
        "versions": package_versions(),
    }
    for name, seconds in result.seconds.items():
        print(f"{name:>24s} {seconds:7.1f} s")
    path = Path(args.results) / f"tour_{args.device}{'_' + args.tag if args.tag else ''}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2))
    print(f"goal: under 180 s; errors: {result.errors or 'none'}; written {path}")


if __name__ == "__main__":
    main()
