"""num_components="auto" against fixed K on simulated tables with a known anomaly share.

Two tables (the generators of tests/test_anomaly.py):

* ``four_clusters``: 2,000 rows, 4 features, four tight Gaussian clusters plus 5 % uniform anomalies.
* ``clustered_anomalies``: 1,000 rows, 4 features, one Gaussian cluster plus four tight clusters of
  anomalies (7.0 %), which extra normal components can take as modes of normal behaviour.

For each, fits K = 1, a larger fixed K and "auto" (``num_steps=100``, seed 0) and prints the chosen K,
P(anomaly) ROC-AUC against the truth, the anomaly fraction (mean and 94 % interval), the warnings fit
gave and the wall time.

Run: ``PYTHONPATH=. python benchmarks/anomaly_auto_components.py``
"""

from __future__ import annotations

import time
import warnings

import numpy as np
from sklearn.metrics import roc_auc_score

from bayesgen.models.anomaly import MixtureAnomalyDetector


def four_clusters(seed: int = 0, n: int = 2000, d: int = 4, frac: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(4, d))
    n_anomalies = int(round(frac * n))
    normal = centres[rng.integers(0, 4, n - n_anomalies)] + rng.normal(scale=0.5, size=(n - n_anomalies, d))
    anomalies = rng.uniform(normal.min(0) - 2, normal.max(0) + 2, size=(n_anomalies, d))
    return np.vstack([normal, anomalies]), np.r_[np.zeros(n - n_anomalies), np.ones(n_anomalies)].astype(bool)


def clustered_anomalies(seed: int = 1, n_normal: int = 930, d: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    normal = rng.normal(size=(n_normal, d))
    size = n_normal // 50
    anomalies = np.vstack([rng.normal(rng.normal(scale=4.0, size=d), 0.3, size=(size, d)) for _ in range(4)])
    return np.vstack([normal, anomalies]), np.r_[np.zeros(n_normal), np.ones(len(anomalies))].astype(bool)


def main() -> None:
    print("| table | num_components | chosen K | ROC-AUC | fraction [94 %] | truth | warned | time (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, make, fixed in (("four_clusters", four_clusters, 4), ("clustered_anomalies", clustered_anomalies, 3)):
        X, y = make()
        for K in (1, fixed, "auto"):
            start = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                det = MixtureAnomalyDetector(num_components=K, num_steps=100, seed=0).fit(X)
            seconds = time.perf_counter() - start
            auc = roc_auc_score(y, det.predict_proba(X))
            f = det.anomaly_fraction()
            warned = "; ".join(str(w.message)[:40] for w in caught if issubclass(w.category, UserWarning)) or "no"
            print(
                f"| {name} | {K} | {det.num_components_} | {auc:.3f} | {f['mean']:.3f} [{f['low']:.3f}, "
                f"{f['high']:.3f}] | {y.mean():.3f} | {warned} | {seconds:.1f} |"
            )
            if det.component_selection_ is not None:
                print()
                print(det.component_selection_.round(4).to_markdown())
                print()


if __name__ == "__main__":
    main()
