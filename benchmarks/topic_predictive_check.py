"""Benchmark: distinct words per document, observed against ProdLDA's replicates and reference models.

ProdLDA's posterior predictive check counts the distinct words of each replicated document. This
compares, on the same documents (the first 50 training documents, as the check uses):

* the observed count;
* ProdLDA's replicates (``predictive_check``), for the decoder without a background term with and
  without batch norm's learned shift (``--no-shift`` rebuilds the decoder without it) and for the
  default background decoder, with the top-10 words' share of the tokens, the number of failed
  statistics, NPMI and perplexity;
* references: each document's own word frequencies, the pooled word frequencies (one distribution
  for all documents) and scikit-learn's LDA (topic proportions from ``transform``), as the expected
  number of distinct words, ``Σ_w 1 − (1 − p_dw)^N_d``.

For the spec's decoder, the same expectation is also given for other ways of drawing replicates:
proportions from the prior, the encoder's mean alone, batch norm on the documents' own statistics,
and batch-norm statistics recomputed on evaluation-mode inputs.

Corpora: ``tour`` (Python's help pages, the ``topic_python_help`` spec; the references use its
split at seed 0, and each ``--seeds`` refit splits the corpus with its own seed, as the spec's
seed does, so each line gives its own observed count), ``simulated``
(ProdLDA's own story with Zipfian word frequencies, ``tests/test_predictive.py``), ``planted`` (an
LDA corpus of four sparse topics, ``tests/test_topic.py``).

Run:  python benchmarks/topic_predictive_check.py tour [--seeds 0 1 2]   (--seeds: the tour corpus only)
      python benchmarks/topic_predictive_check.py simulated
      python benchmarks/topic_predictive_check.py planted
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bayesgen.diagnostics import predictive_check
from bayesgen.models import topic
from bayesgen.models.topic import ProdLDA

TESTS = Path(__file__).resolve().parents[1] / "tests"


def expected_distinct(probs: np.ndarray, lengths: np.ndarray) -> float:
    """Mean over documents of E[number of distinct words] of Multinomial(N_d, p_d)."""
    return float((1 - (1 - probs) ** lengths[:, None]).sum(-1).mean())


class without_shift:  # noqa: N801 - a context manager used like a function
    """Build ProdLDA's decoders without batch norm's shift (the decoder the check flagged)."""

    def __enter__(self) -> None:
        self.original = topic.TopicDecoder.__init__

        def init(decoder, *args, **kwargs):
            self.original(decoder, *args, **kwargs)
            decoder.bn_shift = None

        topic.TopicDecoder.__init__ = init

    def __exit__(self, *exc: object) -> None:
        topic.TopicDecoder.__init__ = self.original


def check_row(est: ProdLDA) -> dict[str, float]:
    table = predictive_check(est, num_samples=200, seed=0).table
    shares = table[table.index.str.startswith("share of tokens[")]
    row = table.loc["distinct words per document[mean]"]
    return {
        "observed": row["observed"],
        "replicated": row["replicated_mean"],
        "top-10 share rep/obs": shares["replicated_mean"].sum() / shares["observed"].sum(),
        "failed": int((~table["ok"]).sum()),
        "of": len(table),
    }


def replicate_variants(est: ProdLDA, x: torch.Tensor) -> dict[str, float]:
    """Expected distinct words when the replicates' proportions or batch norm are taken other ways."""
    n = x.sum(-1).numpy()
    dec = est.decoder_
    _, prior_scale = topic.dirichlet_laplace_prior(int(est.num_topics), float(est.concentration))
    out = {}
    torch.manual_seed(0)
    with torch.no_grad():
        loc, scale = est._local_posterior(x, int(est.refine_steps))
        theta = F.softmax(loc + scale * torch.randn((50, *loc.shape)), -1)
        est._set_training(False)
        out["guide (the check)"] = expected_distinct(dec(theta).numpy(), n)
        out["prior"] = expected_distinct(dec(F.softmax(prior_scale * torch.randn_like(theta), -1)).numpy(), n)
        enc_loc, _ = est.encoder_(x)
        out["encoder mean"] = expected_distinct(dec(F.softmax(enc_loc, -1)).numpy(), n)
        dec.bn.train()  # the documents' own batch statistics (dropout stays off)
        out["batch-norm batch statistics"] = float(np.mean([expected_distinct(dec(t).numpy(), n) for t in theta[:10]]))
        dec.bn.eval()
        e = dec.beta(theta.reshape(-1, theta.shape[-1]))
        ratio = float((e.var(0) / dec.bn.running_var).median())
        mean, var = dec.bn.running_mean.clone(), dec.bn.running_var.clone()
        dec.bn.running_mean.copy_(e.mean(0))
        dec.bn.running_var.copy_(e.var(0))
        out["batch-norm statistics recomputed"] = expected_distinct(dec(theta).numpy(), n)
        dec.bn.running_mean.copy_(mean)
        dec.bn.running_var.copy_(var)
    out["eval/running variance of logits (median)"] = ratio
    return out


def tour(seeds: list[int]) -> None:
    import pydoc_data.topics

    from sklearn.decomposition import LatentDirichletAllocation

    from bayesgen.specs import fit_spec, load_spec
    from bayesgen.text import build_corpus
    from bayesgen.tour import specs_dir

    spec = load_spec(specs_dir() / "topic_python_help.toml")
    pipeline = {key: spec["data"][key] for key in ("stop_words", "min_df", "max_df")}
    corpus = build_corpus(list(pydoc_data.topics.topics.values()), **pipeline)  # as the spec builds it
    train, test = corpus.split(float(spec["data"]["test_fraction"]), seed=int(spec["run"]["seed"]))
    X = train.counts.toarray().astype(float)
    x, n = X[:50], X[:50].sum(1)
    print(
        f"corpus: {train.num_docs} training documents, {corpus.num_words} words; first 50: mean length {n.mean():.1f}"
    )
    print(f"observed distinct words per document: {np.count_nonzero(x, axis=1).mean():.2f}")
    print(f"reference, each document's own frequencies: {expected_distinct(x / n[:, None], n):.1f}")
    pooled = X.sum(0) / X.sum()
    print(
        f"reference, pooled frequencies of the training documents: {expected_distinct(np.tile(pooled, (50, 1)), n):.1f}"
    )
    for k in (5, 10, 20, 40, 63):
        lda = LatentDirichletAllocation(n_components=k, random_state=0, max_iter=300).fit(X)
        phi = lda.components_ / lda.components_.sum(1, keepdims=True)
        print(f"reference, scikit-learn LDA K = {k}: {expected_distinct(lda.transform(x) @ phi, n):.1f}")
    settings = {
        "spec decoder without the shift": ({}, True),
        "spec decoder (original ProdLDA)": ({}, False),
        "default decoder (background, fade 0.75)": ({"background": True, "batch_norm_anneal": 0.75}, False),
    }
    for name, (model, no_shift) in settings.items():
        for seed in seeds:
            s = {**spec, "run": {**spec["run"], "seed": seed}, "model": {**spec["model"], **model}}
            start = time.perf_counter()
            if no_shift:
                with without_shift():
                    fitted = fit_spec(s, device="cpu")
            else:
                fitted = fit_spec(s, device="cpu")
            est, report = fitted.estimator, fitted.report["value"]
            row = check_row(est)
            print(
                f"{name}, seed {seed}: observed {row['observed']:.1f}, replicated {row['replicated']:.1f}, "
                f"top-10 share rep/obs "
                f"{row['top-10 share rep/obs']:.2f}, failed {row['failed']}/{row['of']}, "
                f"NPMI held-out {report['npmi_top8_heldout']:.3f} all {report['npmi_top8_all_docs']:.3f}, "
                f"perplexity {report['perplexity_heldout']:.0f} ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
            if seed == seeds[0] and not model:
                xt = torch.as_tensor(x, dtype=torch.float32)
                for variant, value in replicate_variants(est, xt).items():
                    print(f"    {variant}: {value:.2f}")


def simulated(seeds: list[int]) -> None:
    sys.path.insert(0, str(TESTS))
    from test_predictive import zipf_prodlda_corpus

    for data_seed, fit_seed in [(0, 0), (1, 0), (2, 1), (3, 2), (0, 3)]:
        X, probs, lengths = zipf_prodlda_corpus(seed=data_seed)
        observed = np.count_nonzero(X[:50], axis=1).mean()
        truth = expected_distinct(probs[:50], lengths[:50])
        unigram = expected_distinct(np.tile(X.sum(0) / X.sum(), (50, 1)), lengths[:50])
        line = f"data seed {data_seed}, fit seed {fit_seed}: observed {observed:.2f}, truth {truth:.2f}"
        line += f", pooled {unigram:.2f}"
        for name, no_shift in (("with shift", False), ("without shift", True)):
            settings = dict(num_topics=4, hidden_dim=32, num_epochs=40, batch_size=50, seed=fit_seed)
            settings.update(background=False, batch_norm_anneal=float("inf"))
            if no_shift:
                with without_shift():
                    est = ProdLDA(**settings).fit(X)
            else:
                est = ProdLDA(**settings).fit(X)
            row = check_row(est)
            line += f"; {name}: replicated {row['replicated']:.2f} ({row['replicated'] / observed - 1:+.0%})"
            line += f", top-10 share rep/obs {row['top-10 share rep/obs']:.2f}"
        print(line, flush=True)


def planted(seeds: list[int]) -> None:
    from sklearn.decomposition import LatentDirichletAllocation

    sys.path.insert(0, str(TESTS))
    from test_topic import planted_corpus

    X, theta, beta = planted_corpus()
    n = X.sum(1)[:50]
    print(
        f"observed {np.count_nonzero(X[:50], axis=1).mean():.2f}, truth {expected_distinct(theta[:50] @ beta, n):.2f}"
    )
    lda = LatentDirichletAllocation(n_components=4, random_state=0, max_iter=200).fit(X)
    phi = lda.components_ / lda.components_.sum(1, keepdims=True)
    print(f"scikit-learn LDA K = 4: {expected_distinct(lda.transform(X[:50]) @ phi, n):.2f}")
    for name, settings in (
        ("default decoder", {}),
        ("original decoder", {"background": False, "batch_norm_anneal": float("inf")}),
    ):
        est = ProdLDA(num_topics=4, hidden_dim=50, num_epochs=60, batch_size=32, seed=0, **settings).fit(X)
        tw = est.topic_word().to_numpy()
        off = np.mean([1 - tw[k].reshape(4, 10).sum(1).max() for k in range(4)])
        print(
            f"ProdLDA, {name}: replicated {check_row(est)['replicated']:.2f}, "
            f"mass outside the topic's 10 words {off:.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", choices=["tour", "simulated", "planted"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    warnings.simplefilter("ignore", UserWarning)
    {"tour": tour, "simulated": simulated, "planted": planted}[args.corpus](args.seeds)


if __name__ == "__main__":
    main()
