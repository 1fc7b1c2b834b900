"""Benchmark: the low-rank generator's noise, one variance per class ("isotropic", the default) or one
per feature ("diagonal"), on data sets other than MNIST.

For each data set and split seed (a stratified 70 / 30 split), the default ``GaussianGenerator``
(low-rank, ``rank="auto"``, SVI) is fitted twice, once with each ``noise``, to the same training rows;
:class:`bayesgen.augment.LedoitWolfSampler` is the peer in the same run. Scores: train-on-synthetic /
test-on-real accuracy (``bayesgen.augment.tstr``, logistic regression, as many synthetic rows per class
as the class has training rows), the generator's own accuracy on the test rows, the mean held-out
log-density ``score_samples`` (nats per row) and the fit time.
Data: scikit-learn's 8 × 8 digits (pixels in [0, 1], constant pixels kept, samples clipped, as the
``gaussian_digits`` spec), scikit-learn's breast cancer table and the mlbench tables BreastCancer,
PimaIndiansDiabetes and Ionosphere (``--mlbench`` names the folder of their ``.rda`` files).

Run:  python benchmarks/generator_noise.py [--data digits,sklearn_breast_cancer,BreastCancer,...]
      [--seeds 0,1,2] [--mlbench PATH] [--out benchmarks/results/generator_noise.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split

from bayesgen.augment import LedoitWolfSampler, tstr
from bayesgen.datasets import load_digits
from bayesgen.models.gaussian_generator import GaussianGenerator

sys.path.insert(0, str(Path(__file__).parent))
from anomaly_uci import tables as uci_tables  # noqa: E402  (the tables as the anomaly benchmark reads them)

MLBENCH = ("BreastCancer", "PimaIndiansDiabetes", "Ionosphere")


def load(name: str, mlbench: str | None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Rows, labels and the generator settings the data set needs."""
    if name == "digits":
        X, y = load_digits()
        return X, y, {"constant_features": "keep", "clip": (0.0, 1.0)}
    if name == "sklearn_breast_cancer":
        data = load_breast_cancer()
        return data.data, data.target, {}
    X, y = uci_tables(mlbench)[name]
    return X, y.astype(int), {}


def run_one(name: str, X: np.ndarray, y: np.ndarray, settings: dict, seed: int) -> list[dict]:
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.3, random_state=seed, stratify=y)
    rows = []
    for noise in ("isotropic", "diagonal"):
        started = time.perf_counter()
        gen = GaussianGenerator(noise=noise, seed=seed, **settings).fit(X_tr, y_tr)
        seconds = time.perf_counter() - started
        scores = tstr(gen, X_tr, y_tr, X_te, y_te, seed=seed)
        rows.append(
            {
                "data": name,
                "seed": seed,
                "generator": f"bayesgen noise={noise}",
                "rank": gen.rank_,
                "tstr": scores["tstr"],
                "trtr": scores["trtr"],
                "own_accuracy": float(np.mean(gen.predict(X_te) == y_te)),
                "heldout_log_density": float(np.mean(gen.score_samples(X_te))),
                "fit_s": seconds,
            }
        )
    lw = LedoitWolfSampler(clip=settings.get("clip")).fit(X_tr, y_tr)
    scores = tstr(lw, X_tr, y_tr, X_te, y_te, seed=seed)
    rows.append({"data": name, "seed": seed, "generator": "Ledoit-Wolf sampler", "tstr": scores["tstr"]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="digits,sklearn_breast_cancer," + ",".join(MLBENCH))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--mlbench", default=None, help="folder of the mlbench .rda files")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "generator_noise.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    rows = []
    for name in args.data.split(","):
        X, y, settings = load(name, args.mlbench)
        for seed in map(int, args.seeds.split(",")):
            rows.extend(run_one(name, X, y, settings, seed))
            print(pd.DataFrame(rows[-3:]).round(4).to_string(index=False), flush=True)
    table = pd.DataFrame(rows)
    summary = table.groupby(["data", "generator"], sort=False)[["tstr", "own_accuracy", "heldout_log_density", "fit_s"]]
    print(summary.mean().round(4).to_string())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": " ".join(sys.argv),
        "machine": platform.processor() or platform.machine(),
        "threads": args.threads,
    }
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
