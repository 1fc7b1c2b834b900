"""Benchmark: per-row PSIS k-hat of the amortised guides, and refining them per row (issue 27).

Fits the tour's ProdLDA (``models/topic_python_help.toml``) and VAE (``models/vae_digits.toml``)
specs as shipped, then, with the networks fixed, refines each row's Normal guide on its own ELBO
for 0/20/50/100/200 Adam steps (``bayesgen.models._neural.refine_local``, what
``ProdLDA(refine_steps=...)`` runs) and reports, per setting and seed of the refinement's
noise: the per-row k-hat (500 draws per row), the mean ELBO per row and the share of rows it
lowered, the seconds the refinement took, and (ProdLDA) how far the documents' mean topic
proportions moved (total variation). Also the joint
k-hat over the rows the run folder checks (the first 50 documents / 64 images). Then ProdLDA on
simulated corpora with known topics: per-document k-hat with and without refinement, and how far
the reported mixtures are from the planted ones.

Timings are seconds of one torch thread (set here); the machines are shared, so they are noisy.

Run:  python benchmarks/amortised_refine.py [--out benchmarks/results/amortised_refine.json]
      [--parts prodlda,vae,planted] [--vae-spec vae_digits|vae_mnist] [--vae-rows N]
"""

from __future__ import annotations

import argparse
import functools
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

STEPS = (0, 20, 50, 100, 200)
ROOT = Path(__file__).resolve().parents[1]


def khat_summary(khat: np.ndarray) -> dict:
    k = np.maximum(np.asarray(khat, float), -1.0)
    return {
        "khat_median": float(np.median(k)),
        "khat_p90": float(np.quantile(k, 0.9)),
        "share_above_0.7": float(np.mean(k > 0.7)),
        "share_below_0.5": float(np.mean(k < 0.5)),
    }


def log_weights(log_joint, loc, scale, num_samples, seed):
    """log p(x_i, z) − log q(z) of ``num_samples`` draws per row, shape (n_rows, num_samples)."""
    import pyro.distributions as dist

    g = torch.Generator(device=loc.device).manual_seed(seed)
    with torch.no_grad():
        z = loc + scale * torch.randn((num_samples, *loc.shape), generator=g, device=loc.device)
        return (log_joint(z) - dist.Normal(loc, scale).log_prob(z).sum(-1)).T.cpu().numpy()


def row_khat(log_w):
    from arviz_stats.base import array_stats

    _, k = array_stats.psislw(-(log_w - log_w.max(1, keepdims=True)), r_eff=1.0, axis=-1)
    return np.asarray(k, float)


def sweep(name, log_joint, loc, scale, seed, mean_of=None):
    """Refine for each of STEPS from the encoder's (loc, scale); k-hat, ELBO, seconds per setting."""
    from bayesgen.models._neural import refine_local

    out, base_elbo, base_mean = [], None, None
    for steps in STEPS:
        torch.manual_seed(seed)
        start = time.perf_counter()
        m, s = refine_local(log_joint, loc, scale, num_steps=steps)
        seconds = time.perf_counter() - start
        elbo = log_weights(log_joint, m, s, 200, seed + 1).mean(1)
        row = {
            "model": name,
            "seed": seed,
            "refine_steps": steps,
            "seconds": round(seconds, 3),
            **khat_summary(row_khat(log_weights(log_joint, m, s, 500, seed + 2))),
            "elbo_mean": float(elbo.mean()),
        }
        if base_elbo is None:
            base_elbo = elbo
        row["elbo_gain_mean"] = float((elbo - base_elbo).mean())
        row["share_rows_elbo_lower"] = float(np.mean(elbo < base_elbo - 0.5))  # beyond Monte Carlo noise
        if mean_of is not None:
            mean = mean_of(m, s)
            base_mean = mean if base_mean is None else base_mean
            row["mean_tv_from_encoder"] = float(0.5 * np.abs(mean - base_mean).sum(-1).mean())
        out.append(row)
        print(json.dumps(row))
    return out


def topic(seeds: list[int]) -> dict:
    import torch.nn.functional as F

    from bayesgen.models.topic import DocumentMultinomial, dirichlet_laplace_prior, log_multinomial_coef
    from bayesgen.runs.spec import fit_spec, load_spec

    spec = load_spec(ROOT / "models" / "topic_python_help.toml")
    fitted = fit_spec(spec, "cpu")
    est = fitted.estimator
    est._set_training(False)
    x = est._x.to_dense() if est._x.is_sparse else est._x
    loc0, scale0 = dirichlet_laplace_prior(int(est.num_topics), float(est.concentration))
    n, coef = x.sum(-1), log_multinomial_coef(x)

    def log_joint(z):
        lik = DocumentMultinomial(est.decoder_(F.softmax(z, -1)), n, log_coef=coef).log_prob(x)
        return lik + torch.distributions.Normal(loc0, scale0).log_prob(z).sum(-1)

    def mean_of(m, s):
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            return F.softmax(m + s * torch.randn((2000, *m.shape), generator=g), -1).mean(0).numpy()

    with torch.no_grad():
        loc, scale = est.encoder_(x)
    rows = [r for seed in seeds for r in sweep("prodlda", log_joint, loc, scale, seed, mean_of)]
    joint = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for steps in (0, 100):
            est.refine_steps = steps
            joint[steps] = est.vi_diagnostic(num_samples=1000, seed=0, warn=False).khat
    return {
        "fit_seconds": est.fit_seconds_,
        "documents": int(x.shape[0]),
        "vocabulary": int(x.shape[1]),
        "document_length_median": float(n.median()),
        "joint_khat_first_50": joint,
        "sweep": rows,
    }


def vae(seeds: list[int], spec_name: str = "vae_digits", max_rows: int | None = None) -> dict:
    from bayesgen.models.vae import _onehot, likelihood_dist
    from bayesgen.runs.spec import fit_spec, load_spec

    spec = load_spec(ROOT / "models" / f"{spec_name}.toml")
    est = fit_spec(spec, "cpu").estimator
    est._set_training(False)
    x, y = est._x[:max_rows], None if est._y is None else est._y[:max_rows]
    onehot = _onehot(y, est.num_classes_, x)

    def log_joint(z):
        out = est.decoder_(z, None if onehot is None else onehot.expand(*z.shape[:-1], onehot.shape[-1]))
        lik = likelihood_dist(out, est.likelihood, None if est.gaussian_scale_ is None else est.gaussian_scale_())
        return lik.log_prob(x) + torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)

    with torch.no_grad():
        loc, scale = est.encoder_(x, onehot)
    rows = [r for seed in seeds for r in sweep("vae", log_joint, loc, scale, seed)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        joint = est.vi_diagnostic(num_samples=1000, seed=0, warn=False).khat
    return {
        "spec": spec_name,
        "fit_seconds": est.fit_seconds_,
        "rows": int(x.shape[0]),
        "joint_khat_first_64": joint,
        "sweep": rows,
    }


def planted(seeds: list[int]) -> list[dict]:
    """ProdLDA on simulated corpora with known topics (tests/test_topic.py's planted LDA process).

    Per corpus: the per-document k-hat over all documents, with and without 100 refinement steps, and
    the mean total-variation distance of ``transform``'s mixtures from the planted proportions.
    """
    import sys

    from scipy.optimize import linear_sum_assignment

    from bayesgen._runtime import seeded
    from bayesgen.diagnostics import vi_khat_rows
    from bayesgen.models.topic import ProdLDA, local_guide

    sys.path.insert(0, str(ROOT / "tests"))
    from test_topic import planted_corpus

    out = []
    for docs, length, epochs in ((800, 80, 60), (200, 400, 10), (200, 400, 30)):
        X, theta, _ = planted_corpus(seed=2, D=docs, length=length)
        lda = ProdLDA(num_topics=4, hidden_dim=50, num_epochs=epochs, batch_size=32, seed=0).fit(X)
        x = torch.as_tensor(X, dtype=torch.float32)
        m, _ = lda._model_and_guide()
        top = lda._top_indices(10)
        overlap = np.array([[len(set(t) & set(range(10 * k, 10 * k + 10))) for k in range(4)] for t in top])
        rows, cols = linear_sum_assignment(-overlap)
        for steps in (0, 100):
            for seed in seeds:
                with seeded(seed):
                    loc, scale = lda._local_posterior(x, steps)
                diag = vi_khat_rows(
                    m,
                    functools.partial(local_guide, loc=loc, scale=scale),
                    x,
                    plate="document",
                    num_samples=500,
                    param_state=lda._param_state,
                    seed=seed + 1,
                    warn=False,
                )
                mean = lda.transform(X, refine_steps=steps, seed=seed).mean
                row = {
                    "documents": docs,
                    "length": length,
                    "epochs": epochs,
                    "refine_steps": steps,
                    "seed": seed,
                    **khat_summary(diag.khat),
                    "tv_to_planted": float(0.5 * np.abs(mean[:, rows] - theta[:, cols]).sum(1).mean()),
                }
                out.append(row)
                print(json.dumps(row))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "amortised_refine.json"))
    parser.add_argument("--seeds", default="0,1,2", help="seeds of the refinement noise and the k-hat draws")
    parser.add_argument("--parts", default="prodlda,vae,planted", help="comma-separated: prodlda, vae, planted")
    parser.add_argument("--vae-spec", default="vae_digits", help="the VAE spec under models/ (e.g. vae_mnist)")
    parser.add_argument("--vae-rows", type=int, default=None, help="refine only the first rows of the VAE's")
    args = parser.parse_args()
    seeds = [int(v) for v in args.seeds.split(",")]
    parts = args.parts.split(",")
    torch.set_num_threads(1)
    result: dict = {"torch_threads": 1}
    if "prodlda" in parts:
        result["prodlda"] = topic(seeds)
    if "vae" in parts:
        result["vae"] = vae(seeds, args.vae_spec, args.vae_rows)
    if "planted" in parts:
        result["planted"] = planted(seeds)
    for name in [p for p in ("prodlda", "vae") if p in result]:
        r = result[name]
        print(
            name,
            "fit",
            round(r["fit_seconds"], 2),
            "s; joint k-hat",
            r.get("joint_khat_first_50", r.get("joint_khat_first_64")),
        )
    from bayesgen.io import write_json

    write_json(Path(args.out), result, default=float)


if __name__ == "__main__":
    main()
