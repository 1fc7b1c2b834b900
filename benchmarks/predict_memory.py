"""Benchmark: time and peak extra memory of ``GaussianGenerator.predict_proba`` against scikit-learn's QDA.

Every case runs in its own subprocess, which builds the data (seeded) and fits both the
case's model and the reference, ``QuadraticDiscriminantAnalysis(solver="eigen",
shrinkage="auto")`` (0.1 where "auto" leaves a class's covariance singular), then predicts ``--rows`` rows
with each, alternately, ``--repeats``
times. Before each call the process's peak resident set size is reset
(``/proc/self/clear_refs``, Linux); "extra memory" is the peak during the call minus the
resident size just before it (the largest over repeats). Times are medians; the ratio is
ours / QDA's, from the same process.

Data: ``random`` is uniform [0, 1] rows of ``--dim`` features in ``--classes`` classes, the
first ``--fit-rows`` for fitting; ``digits`` is scikit-learn's 8 x 8 digits (pixels / 16),
fitted on all 1,797 images and predicted on them repeated to ``--rows`` rows.

Cases (``--cases``, comma-separated): ``exact-full``, ``exact-diag``, ``exact-full-subspace``
(``subspace=30``); ``svi-diag``, ``svi-lowrank`` (SVI fits of 20 steps: prediction cost does
not depend on how well the guide fits) with ``--num-samples`` posterior draws; ``score-full``
(``score_samples`` of the exact full model).

Run:  python benchmarks/predict_memory.py [--data random|digits] [--rows 10000] [--cases exact-full,...]
          [--repeats 3] [--out benchmarks/results/predict_memory.json]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CASES = ("qda", "exact-full", "exact-diag", "exact-full-subspace", "svi-diag", "svi-lowrank", "score-full")


def make_data(kind: str, fit_rows: int, rows: int, dim: int, classes: int) -> tuple:
    """(X_fit, y_fit, X_predict)."""
    if kind == "digits":
        from sklearn.datasets import load_digits

        X, y = load_digits(return_X_y=True)
        X = X / 16.0
        return X, y, np.resize(X, (rows, X.shape[1]))
    rng = np.random.default_rng(0)
    X = rng.random((max(fit_rows, rows), dim))
    y = np.arange(fit_rows) % classes
    return X[:fit_rows], y, X[:rows]


def rss_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def estimator(case: str, num_samples: int) -> object:
    if case == "qda":
        from sklearn.discriminant_analysis import QuadraticDiscriminantAnalysis

        return QuadraticDiscriminantAnalysis(solver="eigen", shrinkage="auto")
    from bayesgen import GaussianGenerator

    common = {"constant_features": "keep", "clip": (0, 1), "seed": 0}
    if case in ("exact-full", "score-full"):
        return GaussianGenerator(covariance="full", method="exact", **common)
    if case == "exact-full-subspace":
        return GaussianGenerator(covariance="full", method="exact", subspace=30, **common)
    if case == "exact-diag":
        return GaussianGenerator(covariance="diag", method="exact", **common)
    covariance = case.split("-")[1]
    return GaussianGenerator(
        covariance=covariance,
        method="svi",
        num_steps=20,
        average_last=5,
        convergence_rtol=None,
        num_samples=num_samples,
        **common,
    )


def measure(call) -> tuple[float, float]:
    """Seconds and peak extra resident memory (MB) of ``call()``."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # return freed memory so it cannot hide the call's
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # peak RSS := current RSS
    before = rss_kb("VmRSS")
    start = time.perf_counter()
    call()
    seconds = time.perf_counter() - start
    return seconds, (rss_kb("VmHWM") - before) / 1024


def worker(args: argparse.Namespace) -> dict:
    """Fit QDA and one case, then time their predictions alternately; runs in a fresh process."""
    import torch

    torch.set_num_threads(args.threads)
    X, y, Xp = make_data(args.data, args.fit_rows, args.rows, args.dim, args.classes)
    fitted = {}
    qda_shrinkage = "auto"
    for case in ("qda", args.case):
        start = time.perf_counter()
        est = estimator(case, args.num_samples)
        try:
            est.fit(X, y)
        except np.linalg.LinAlgError:  # QDA: a class's pixels never vary (digits' borders); shrink further
            qda_shrinkage = 0.1
            est.set_params(shrinkage=qda_shrinkage).fit(X, y)
        fitted[case] = (est, time.perf_counter() - start)
    times = {case: [] for case in fitted}
    extra = {case: [] for case in fitted}
    for _ in range(args.repeats):
        for case, (est, _) in fitted.items():
            call = (lambda e=est: e.score_samples(Xp)) if case == "score-full" else (lambda e=est: e.predict_proba(Xp))
            seconds, mb = measure(call)
            times[case].append(seconds)
            extra[case].append(mb)
    ours, qda = args.case, "qda"
    return {
        "case": ours,
        "data": args.data,
        "rows": len(Xp),
        "features": Xp.shape[1],
        "repeats": args.repeats,
        "fit_s": fitted[ours][1],
        "predict_s": float(np.median(times[ours])),
        "extra_mb": max(extra[ours]),
        "qda_fit_s": fitted[qda][1],
        "qda_predict_s": float(np.median(times[qda])),
        "qda_extra_mb": max(extra[qda]),
        "qda_shrinkage": qda_shrinkage,
        "time_ratio": float(np.median(times[ours]) / np.median(times[qda])),
        "times_s": times[ours],
        "qda_times_s": times[qda],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=("random", "digits"), default="random")
    parser.add_argument("--fit-rows", type=int, default=5000)
    parser.add_argument("--rows", type=int, default=10000)
    parser.add_argument("--dim", type=int, default=784)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--num-samples", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", default="exact-full")
    parser.add_argument("--out", default=None)
    parser.add_argument("--case", help=argparse.SUPPRESS)  # one case, in a worker process
    args = parser.parse_args()
    if args.case:
        print(json.dumps(worker(args)))
        return
    rows = []
    for case in args.cases.split(","):
        if case not in CASES or case == "qda":
            parser.error(f"unknown case {case!r}; cases are {', '.join(CASES[1:])}")
        cmd = [sys.executable, __file__, "--case", case] + [
            f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("case", "cases", "out")
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(json.dumps(row), flush=True)
        print(
            f"{case}: {row['time_ratio']:.2f}x QDA's predict time ({row['predict_s']:.2f} s vs "
            f"{row['qda_predict_s']:.2f} s), {row['extra_mb']:.0f} MB extra (QDA {row['qda_extra_mb']:.0f} MB)",
            flush=True,
        )
    result = {"machine": platform.platform(), "python": platform.python_version(), "args": vars(args), "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
