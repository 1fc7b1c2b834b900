"""Benchmark: how close the A/B test's SVI posterior gets to the exact conjugate posterior.

For three data sets (the bundled résumé callbacks, a close race, 1e5 trials per variant)
and five seeds, fits BetaBinomialTest with its default settings and reports the worst
relative error of the posterior means and sds, the gap in posterior sds, and the absolute
error of P(B > A) computed from 40,000 SVI draws (its Monte Carlo sd is about 0.0016).

Run:  python benchmarks/ab_test_svi_vs_exact.py
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import pandas as pd
from scipy import stats

from bayesgen import BetaBinomialTest
from bayesgen.models.ab_test import prob_best_exact

CASES = [
    ("resume callbacks", [235, 157], [2435, 2435]),
    ("close race", [120, 138], [2000, 2000]),
    ("1e5 trials", [12000, 12400], [100000, 100000]),
]


def main() -> None:
    warnings.simplefilter("ignore", UserWarning)
    rows = []
    for name, successes, trials in CASES:
        for seed in range(5):
            start = time.perf_counter()
            test = BetaBinomialTest(seed=seed, num_samples=40_000).fit(successes, trials)
            seconds = time.perf_counter() - start
            exact = test.exact_summary()
            a, b = test.posterior_alpha_, test.posterior_beta_
            rows.append(
                {
                    "case": name,
                    "seed": seed,
                    "max_mean_rel_err": np.abs(stats.beta.mean(a, b) / exact["mean"].to_numpy() - 1).max(),
                    "max_sd_rel_err": np.abs(stats.beta.std(a, b) / exact["sd"].to_numpy() - 1).max(),
                    "max_mean_gap_sd": test.exact_gap_["max_mean_gap_sd"],
                    "abs_err_prob_b_best": abs(
                        float(test.prob_best().iloc[1]) - prob_best_exact(test.exact_alpha_, test.exact_beta_)[1]
                    ),
                    "fit_seconds": seconds,
                }
            )
    table = pd.DataFrame(rows).drop(columns="seed").groupby("case", sort=False).max()
    print("worst over 5 seeds:")
    print(table.round(4).to_string())


if __name__ == "__main__":
    main()
