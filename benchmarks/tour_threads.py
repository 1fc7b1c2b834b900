"""Benchmark: `bayesgen tour` under three thread settings, on an idle CPU and beside one busy process.

Goal (issue 33 §5): the default setting within 15 % of the best setting's time on an idle machine,
and at most 1.3× its own idle time beside one other busy process (a loop on one core, as
`yes > /dev/null` is). Settings, each a fresh `bayesgen tour` process:

* ``bayesgen``: the defaults (``num_threads="auto"`` and the command's short OpenMP spin);
* ``torch``: torch's own thread count (one per core) and OpenMP's default spin, set as a user
  would (``OMP_NUM_THREADS=<cores>``, ``GOMP_SPINCOUNT=300000``), which ``"auto"`` keeps;
* ``one``: ``OMP_NUM_THREADS=1``.

Ratios are taken within one run of this script; the machine, the load average at the start and
every time go to benchmarks/results/tour_threads.json.

Run:  python benchmarks/tour_threads.py [--rounds 1] [--out /tmp/tour-threads]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
SETTINGS = {
    "bayesgen": {},
    "torch": {"OMP_NUM_THREADS": str(CORES), "GOMP_SPINCOUNT": "300000"},
    "one": {"OMP_NUM_THREADS": "1"},
}
CLEARED = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "GOMP_SPINCOUNT", "OMP_WAIT_POLICY")


def tour(setting: str, out: Path) -> float:
    env = {k: v for k, v in os.environ.items() if k not in CLEARED} | SETTINGS[setting]
    start = time.perf_counter()
    command = [sys.executable, "-m", "bayesgen", "tour", "--out", str(out), "--overwrite", "--device", "cpu"]
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--out", default="/tmp/tour-threads")
    parser.add_argument("--results", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    times: dict[str, dict[str, list[float]]] = {"idle": {}, "busy": {}}
    load = {"idle": [], "busy": []}
    for _ in range(args.rounds):
        for condition in ("idle", "busy"):
            busy = None
            if condition == "busy":
                busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
                time.sleep(2)
            try:
                for setting in SETTINGS:
                    load[condition].append(os.getloadavg()[0])
                    seconds = tour(setting, Path(args.out) / f"{condition}_{setting}")
                    times[condition].setdefault(setting, []).append(seconds)
                    print(f"{condition:>5s} {setting:>9s} {seconds:7.1f} s", flush=True)
            finally:
                if busy is not None:
                    busy.kill()
    median = {c: {s: sorted(v)[len(v) // 2] for s, v in t.items()} for c, t in times.items()}
    best_idle = min(median["idle"].values())
    ratios = {
        "default_vs_best_idle": median["idle"]["bayesgen"] / best_idle,
        "default_busy_vs_idle": median["busy"]["bayesgen"] / median["idle"]["bayesgen"],
        "torch_busy_vs_idle": median["busy"]["torch"] / median["idle"]["torch"],
        "one_busy_vs_idle": median["busy"]["one"] / median["idle"]["one"],
    }
    record = {
        "seconds": times,
        "median_seconds": median,
        "ratios": ratios,
        "goals": {"default_vs_best_idle": 1.15, "default_busy_vs_idle": 1.3},
        "load_average_at_start": load,
        "machine": {"cores": CORES, "platform": platform.platform(), "processor": platform.processor()},
    }
    path = Path(args.results) / "tour_threads.json"
    path.write_text(json.dumps(record, indent=2))
    for name, value in ratios.items():
        print(f"{name:>22s} {value:5.2f}")
    print(f"written {path}")


if __name__ == "__main__":
    main()
