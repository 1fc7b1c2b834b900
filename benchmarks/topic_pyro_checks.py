"""Benchmark: ProdLDA's training step with Pyro's checks on the first step only (the default) or on every step.

Fits the same ProdLDA (20 topics, 100 epochs of batch 64) both ways, interleaved in one process, on the
``lda`` package's Reuters bag of words, and prints the median CPU milliseconds per step (one torch thread)
and the per-round ratio.

Run:  python benchmarks/topic_pyro_checks.py
"""

import statistics
import time
import warnings

import torch

from bayesgen.models.topic import ProdLDA
from bayesgen.text import load_reuters

torch.set_num_threads(1)
warnings.simplefilter("ignore")
corpus = load_reuters()
train = corpus if not isinstance(corpus, tuple) else corpus[0]


class Always(ProdLDA):
    def _run_svi(self, *a, **k):
        return super()._run_svi(*a, **{**k, "pyro_validation": "always"})


res = {"first": [], "always": []}
ProdLDA(num_topics=20, num_epochs=5, seed=0).fit(train)
for r in range(7):
    for name in ["first", "always"] if r % 2 == 0 else ["always", "first"]:
        cls = ProdLDA if name == "first" else Always
        t = time.process_time()
        m = cls(num_topics=20, num_epochs=100, seed=0).fit(train)
        res[name].append(1000 * (time.process_time() - t) / len(m.losses_))
print({k: round(statistics.median(v), 3) for k, v in res.items()}, "steps", len(m.losses_))
print(
    "paired always/first",
    round(statistics.median([a / b for a, b in zip(res["always"], res["first"], strict=True)]), 3),
    [round(a / b, 3) for a, b in zip(res["always"], res["first"], strict=True)],
)
