"""Benchmark: what computing the multinomial coefficient once saves per ProdLDA training step.

``log N! − Σ log x_w!`` does not depend on the parameters; ProdLDA computes it once per
training document (``log_multinomial_coef``) instead of in every step's log density.
This fits the same model both ways, interleaved, in the same process, and reports CPU
seconds per step and their ratio (CPU time, one torch thread: the shared machines are
noisy in wall time).

Corpus: the ``lda`` package's Reuters bag of words (316 training documents × 4,258 words,
the topic benchmark's split), 100 epochs of batch 64 = 400 steps.

Run:  python benchmarks/topic_step_cost.py [--reuters DIR] [--repeats 3] [--epochs 100]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch

from bayesgen.models.topic import ProdLDA
from bayesgen.text import load_reuters


def cpu_ms_per_step(train, k, epochs, per_step):
    original = ProdLDA._train_epochs

    def without_coefficient(self, *args, model_kwargs=None, **kwargs):
        return original(self, *args, **kwargs)

    if per_step:  # the old behaviour: no coefficient given, so each step's log_prob computes it
        ProdLDA._train_epochs = without_coefficient
    try:
        start = time.process_time()
        model = ProdLDA(num_topics=k, num_epochs=epochs, seed=0).fit(train)
        return 1000 * (time.process_time() - start) / len(model.losses_)
    finally:
        ProdLDA._train_epochs = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reuters", default=None, help="folder with reuters.ldac/.tokens (default: the lda package)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=100)
    args = parser.parse_args()
    warnings.simplefilter("ignore", UserWarning)
    torch.set_num_threads(1)
    corpus, _ = load_reuters(args.reuters)
    train, _ = corpus.split(0.2, seed=0)
    ProdLDA(num_topics=20, num_epochs=1, seed=0).fit(train)  # imports and first-call costs, not timed
    for k in (20, 50):
        once, per_step = [], []
        for _ in range(args.repeats):
            once.append(cpu_ms_per_step(train, k, args.epochs, per_step=False))
            per_step.append(cpu_ms_per_step(train, k, args.epochs, per_step=True))
        print(
            f"K={k}: coefficient once {np.mean(once):.2f} ms/step, per step {np.mean(per_step):.2f} ms/step, "
            f"ratio {np.mean(once) / np.mean(per_step):.3f} "
            f"(per run: {[round(a / b, 3) for a, b in zip(once, per_step, strict=True)]})"
        )


if __name__ == "__main__":
    main()
