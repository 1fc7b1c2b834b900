"""Benchmark: augmentation at k labelled rows per class against two baselines, on images or a table.

Images: scikit-learn's 8 × 8 digits (``--data digits``; MNIST is
``benchmarks/gaussian_generator_mnist.py --parts lowdata``). Tables: the mlbench tables
``BreastCancer``, ``PimaIndiansDiabetes``, ``Ionosphere`` (Debian's r-cran-mlbench, read with
pyreadr; ``--mlbench`` names the ``.rda`` folder) and scikit-learn's ``sklearn_breast_cancer``.
Generators, each fitted to the same k rows per class in the same run: bayesgen's exact full
covariance in 30 principal components (images) or its defaults (tables), its exact full
covariance on all features, :class:`bayesgen.augment.LedoitWolfSampler` (the plug-in normal with
Ledoit–Wolf covariance) and, on images, a plain per-class ``np.cov`` sampler and a conditional VAE
(``models/vae_digits.toml``'s network; its decoder's mean images). The classifier is
``bayesgen.augment.mlp_classifier`` or logistic regression (``--classifier logistic``), scored on
a fixed 30 % test split.

Run:  python benchmarks/augment_baselines.py [--data digits|BreastCancer|PimaIndiansDiabetes|Ionosphere|
      sklearn_breast_cancer] [--k 20] [--repeats 5] [--synthetic 500] [--classifier mlp|logistic]
      [--mlbench PATH] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

from bayesgen.augment import LedoitWolfSampler, default_classifier, low_data_experiment, mlp_classifier
from bayesgen.datasets import load_digits
from bayesgen.models.gaussian_generator import GaussianGenerator
from bayesgen.models.vae import VAE

sys.path.insert(0, str(Path(__file__).parent))
from anomaly_uci import tables as uci_tables  # noqa: E402  (the tables as the anomaly benchmark reads them)
from gaussian_generator_mnist import PlainGaussianSampler  # noqa: E402  (the same plain sampler as on MNIST)

IMAGE_GENERATORS = {
    "bayesgen_subspace30_exact": lambda: GaussianGenerator(
        covariance="full", method="exact", subspace=30, constant_features="keep", clip=(0, 1), seed=0
    ),
    "bayesgen_full_exact": lambda: GaussianGenerator(
        covariance="full", method="exact", constant_features="keep", clip=(0, 1), seed=0
    ),
    "ledoit_wolf": lambda: LedoitWolfSampler(clip=(0, 1)),
    "plain_numpy": PlainGaussianSampler,
    # models/vae_digits.toml's network and optimiser; epochs raised so that k rows per class get about
    # the spec's ~1,100 steps (its 1,164 training rows make 18 steps an epoch; 180 rows make 3).
    "bayesgen_vae_conditional": lambda: VAE(
        latent_dim=8,
        hidden_dims=[256],
        likelihood="bernoulli",
        conditional=True,
        num_epochs=400,
        batch_size=64,
        learning_rate=0.002,
        validation_fraction=0.1,
        patience=10,
        seed=0,
    ),
}
TABLE_GENERATORS = {
    "bayesgen_default": lambda: GaussianGenerator(seed=0),
    "bayesgen_full_exact": lambda: GaussianGenerator(covariance="full", method="exact", seed=0),
    "ledoit_wolf": LedoitWolfSampler,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="digits")
    parser.add_argument("--mlbench", default=None, help="folder of the mlbench .rda files")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--synthetic", type=int, default=500)
    parser.add_argument("--classifier", choices=["mlp", "logistic"], default="mlp")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    if args.data == "digits":
        X, y = load_digits()
        generators = IMAGE_GENERATORS
        described = "scikit-learn digits (8 x 8), 30 % test split (random_state=0)"
    else:
        X, y = uci_tables(args.mlbench)[args.data]
        y = y.astype(int)
        generators = TABLE_GENERATORS
        described = f"{args.data} ({X.shape[0]} x {X.shape[1]}), 30 % test split (random_state=0)"
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    classifier = mlp_classifier if args.classifier == "mlp" else default_classifier
    tables = []
    for name, make in generators.items():
        table = low_data_experiment(
            make,
            X_tr,
            y_tr,
            X_te,
            y_te,
            k_per_class=(args.k,),
            num_synthetic_per_class=args.synthetic,
            repeats=args.repeats,
            classifier=classifier,
            seed=0,
        )
        table["generator"] = name
        tables.append(table)
        print(f"{name:>28s} gain {table['gain'].mean():+.4f} (min {table['gain'].min():+.4f})", flush=True)
    low = pd.concat(tables)
    gains = low.pivot_table(index="repeat", columns="generator", values="gain")
    record = {
        "data": described,
        "k": args.k,
        "synthetic_per_class": args.synthetic,
        "classifier": args.classifier,
        "real_only_mean": float(low["real_only"].mean()),
        "gain_mean": {k: float(v) for k, v in gains.mean().items()},
        "gain_by_repeat": {k: [float(x) for x in v] for k, v in gains.items()},
        "machine": platform.platform(),
    }
    out = Path(args.out) / f"augment_baselines_{args.data}_k{args.k}_{args.classifier}.json"
    out.write_text(json.dumps(record, indent=2))
    print(json.dumps(record["gain_mean"], indent=2), f"\nwritten {out}")


if __name__ == "__main__":
    main()
