"""Benchmark: how long ``bayesgen --help`` and ``import bayesgen`` take, against Python itself and Pyro.

Each command runs as a fresh interpreter, the commands interleaved round by round so a change in
the machine's load falls on all of them alike; the table gives the median wall and CPU seconds
(CPU: the child's user + system time) of ``--repeats`` rounds, after one unmeasured warm-up round
that fills the file cache.

Goals: ``bayesgen --help`` within 2x of ``python -c pass``; ``import bayesgen`` no slower than
``import pyro``.

Run:  python benchmarks/import_time.py [--repeats 9]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

COMMANDS = {
    "python -c pass": ["-c", "pass"],
    "python -m bayesgen --help": ["-m", "bayesgen", "--help"],
    'python -c "import bayesgen"': ["-c", "import bayesgen"],
    'python -c "import pyro"': ["-c", "import pyro"],
}


def run_once(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of one fresh interpreter running ``args``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9, help="measured rounds (default 9)")
    args = parser.parse_args()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    for argv in COMMANDS.values():  # warm-up: the file cache, .pyc files
        run_once(argv, env)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in COMMANDS}
    for _ in range(args.repeats):
        for name, argv in COMMANDS.items():
            times[name].append(run_once(argv, env))
    median = {
        name: (statistics.median(w for w, _ in t), statistics.median(c for _, c in t)) for name, t in times.items()
    }
    base_wall, base_cpu = median["python -c pass"]
    print(f"{sys.executable} (Python {sys.version.split()[0]}), median of {args.repeats} runs")
    print(f"{'command':32} {'wall s':>8} {'x pass':>7} {'CPU s':>7} {'x pass':>7}")
    for name, (wall, cpu) in median.items():
        print(f"{name:32} {wall:8.3f} {wall / base_wall:7.2f} {cpu:7.3f} {cpu / base_cpu:7.2f}")
    helps, imports, pyro = (median[k] for k in list(COMMANDS)[1:])
    print(f"bayesgen --help within 2x of python -c pass (wall): {helps[0] <= 2 * base_wall}")
    print(f"import bayesgen no slower than import pyro (wall): {imports[0] <= pyro[0]}")


if __name__ == "__main__":
    main()
