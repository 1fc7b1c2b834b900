"""Benchmark: semi-supervised fitting of the Gaussian generator on scikit-learn's digits.

k labelled digits per class (k = 3, 5, 10; 3 repeats of ``numpy.random.default_rng(r)``) out of
a 70 % training split; the other training digits are passed as ``unlabelled``. For each
generator (labelled rows only; EM with ``unlabelled_weight`` 1 and 0.1) it reports the
generator's own test accuracy (``predict``) and the gain of logistic regression
(``bayesgen.augment.default_classifier``) from 100 synthetic rows per class, against the same
classifier on the k·10 real rows, all on the 30 % test split. Bundled data: no download.

Run:  python benchmarks/gaussian_generator_semisupervised_digits.py [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import platform
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import train_test_split

from bayesgen.augment import augment, default_classifier
from bayesgen.datasets import load_digits
from bayesgen.models.gaussian_generator import GaussianGenerator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    warnings.simplefilter("ignore", UserWarning)
    X, y = load_digits()
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    rows = []
    for k in (3, 5, 10):
        for rep in range(3):
            rng = np.random.default_rng(rep)
            few = np.concatenate([rng.choice(np.flatnonzero(y_train == c), k, replace=False) for c in range(10)])
            rest = np.setdiff1d(np.arange(len(X_train)), few)
            real = default_classifier().fit(X_train[few], y_train[few]).score(X_test, y_test)
            for name, weight in (("labelled_only", None), ("em_weight1", 1.0), ("em_weight0.1", 0.1)):
                settings = {} if weight is None else {"unlabelled_weight": weight}
                gen = GaussianGenerator(
                    covariance="full", method="exact", constant_features="keep", clip=(0, 1), **settings
                )
                gen.fit(X_train[few], y_train[few], **({} if weight is None else {"unlabelled": X_train[rest]}))
                data = augment(X_train[few], y_train[few], gen, num_per_class=100, seed=rep)
                augmented = default_classifier().fit(data.X, data.y).score(X_test, y_test)
                rows.append(
                    {
                        "k": k,
                        "repeat": rep,
                        "generator": name,
                        "real_only": real,
                        "generator_accuracy": float(np.mean(gen.predict(X_test) == y_test)),
                        "augmented": augmented,
                        "gain": augmented - real,
                    }
                )
    table = pd.DataFrame(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "gaussian_generator_semisupervised_digits.csv", index=False)
    print(f"{platform.platform()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(table.groupby(["k", "generator"])[["real_only", "generator_accuracy", "augmented", "gain"]].mean().round(3))
    print(table.pivot_table(index=["k", "repeat"], columns="generator", values="gain").round(3))


if __name__ == "__main__":
    main()
