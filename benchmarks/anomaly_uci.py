"""Benchmark: bayesgen's mixture anomaly detector against IsolationForest and GaussianMixture.

Data sets (the minority class is the "anomaly"; labels are used only for scoring):
* BreastCancer (mlbench; rows with NA dropped: 683; malignant),
* PimaIndiansDiabetes (mlbench; 768; diabetes = pos),
* Ionosphere (mlbench; 351; Class = bad; the constant column V2 dropped),
* scikit-learn's breast cancer data (569; malignant).

All methods are unsupervised and fitted on all rows, in the same run. Scores: ROC-AUC and
average precision of each method's anomaly score (bayesgen: -score_samples, the log density
under its normal components, and separately its posterior anomaly probability;
IsolationForest, seeds 0-4: -score_samples; GaussianMixture (1 full component on
standardised features): -score_samples), the Brier score of bayesgen's probabilities against
the labels (the calibration figure, next to the Brier score of a constant prediction at the
true share) and their mean, and fit time. bayesgen runs with its defaults (1 normal
component, full covariance, the inflated anomaly component, Beta(1, 19) prior on the
anomaly fraction) for each of ``--seeds``, and once with the defaults before session 10
(2 normal components, the fixed Student-t anomaly component) for reference (``--no-previous``
skips it).

``--num-components 1,auto`` (a comma list of integers and "auto") fits bayesgen once per entry and
seed; the default entry 1 is stored under "bayesgen", any other K under "bayesgen_K<K>". Each fit
records the K it used (``num_components_``), the warnings ``fit`` gave, and with "auto" the
selection table (``component_selection_``); a fit that raises is recorded with its "error" (and
the K it chose) and the run goes on. ``--threads`` sets torch's threads (0: leave them).

Calibration with a few labels (``calibration_with_labels``, first seed's fit): ``--labelled`` rows
drawn at random (both classes present), ``calibrate`` on them, and the Brier score on all
*other* rows, repeated ``--repeats`` times; next to it, on the same rows, the Brier score of the
uncalibrated probability and of a constant at the labelled rows' share (what those labels alone
would give).

Needs pyreadr and Debian's r-cran-mlbench (``apt-get download r-cran-mlbench && dpkg-deb -x
r-cran-mlbench_*.deb DIR``; pass ``--mlbench DIR``) for the three mlbench tables.

Run:  python benchmarks/anomaly_uci.py [--mlbench DIR] [--seeds 0,1,2] [--labelled 50] [--repeats 20] [--tag NAME]
      [--num-components 1,auto] [--no-previous] [--threads 1]
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
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import IsolationForest
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score
from sklearn.mixture import GaussianMixture
from sklearn.preprocessing import StandardScaler

from bayesgen.datasets import load_mlbench
from bayesgen.models.anomaly import MixtureAnomalyDetector


def tables(mlbench):
    out = {}
    bc = load_mlbench("BreastCancer", mlbench).dropna()
    X = bc.drop(columns=["Id", "Class"]).apply(lambda c: pd.to_numeric(c.astype(str)))
    out["BreastCancer"] = (X.to_numpy(float), (bc["Class"].astype(str) == "malignant").to_numpy())
    pima = load_mlbench("PimaIndiansDiabetes", mlbench)
    out["PimaIndiansDiabetes"] = (
        pima.drop(columns=["diabetes"]).to_numpy(float),
        (pima["diabetes"].astype(str) == "pos").to_numpy(),
    )
    ion = load_mlbench("Ionosphere", mlbench)
    Xi = ion.drop(columns=["Class"]).apply(lambda c: pd.to_numeric(c.astype(str)))
    Xi = Xi.loc[:, Xi.std() > 0]
    out["Ionosphere"] = (Xi.to_numpy(float), (ion["Class"].astype(str) == "bad").to_numpy())
    data = load_breast_cancer()
    out["sklearn_breast_cancer"] = (data.data, data.target == 0)
    return out


def _selection(det):
    """``component_selection_`` as records (None without "auto")."""
    table = getattr(det, "component_selection_", None)
    return None if table is None else table.reset_index().to_dict(orient="records")


def scores(y, s):
    return {"roc_auc": float(roc_auc_score(y, s)), "average_precision": float(average_precision_score(y, s))}


def calibration_with_labels(det, X, y, n_labelled, repeats, seed=0):
    """Brier scores on the unlabelled rows after calibrating on ``n_labelled`` random labelled rows."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(repeats):
        while True:
            idx = rng.choice(len(X), size=n_labelled, replace=False)
            if 0 < y[idx].sum() < n_labelled:
                break
        rest = np.setdiff1d(np.arange(len(X)), idx)
        det.calibrate(X[idx], y[idx])
        p = det.predict_proba(X[rest])
        raw = det.predict_proba(X[rest], calibrated=False)
        rows.append(
            {
                "brier": float(brier_score_loss(y[rest], p)),
                "brier_uncalibrated": float(brier_score_loss(y[rest], raw)),
                "brier_labelled_share": float(brier_score_loss(y[rest], np.full(len(rest), y[idx].mean()))),
                "slope": det.calibration_["slope"],
                "intercept": det.calibration_["intercept"],
            }
        )
    det.calibration_ = None
    table = pd.DataFrame(rows)
    beats = int((table["brier"] < table["brier_labelled_share"]).sum())
    return {
        "labelled_rows": n_labelled,
        "repeats": repeats,
        "mean": table.mean().to_dict(),
        "sd": table.std().to_dict(),
        "calibrated_beats_share": beats,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mlbench", default=None, help="folder of mlbench .rda files (or an extracted .deb)")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--seeds", default="0,1,2", help="bayesgen seeds (IsolationForest: 0-4)")
    parser.add_argument("--labelled", type=int, default=50, help="labelled rows for calibrate (0: skip)")
    parser.add_argument("--repeats", type=int, default=20, help="random labelled subsets")
    parser.add_argument("--tag", default="", help="suffix for the JSON file name")
    parser.add_argument("--num-components", default="1", help='bayesgen settings: comma list of K and "auto"')
    parser.add_argument("--no-previous", action="store_true", help="skip the session-2 defaults")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's count)")
    args = parser.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    components = [c if c == "auto" else int(c) for c in args.num_components.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {
        "machine": platform.platform(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "num_components": components,
        "sets": {},
    }
    for name, (X, y) in tables(args.mlbench).items():
        row = {"rows": len(X), "features": X.shape[1], "anomaly_share": float(y.mean())}
        # The Brier score of a constant prediction at the true share: a calibrated score must beat it.
        row["brier_base_rate"] = float(y.mean() * (1 - y.mean()))
        runs = [
            ("bayesgen" if k == 1 else f"bayesgen_K{k}", {} if k == 1 else {"num_components": k}, args.seeds)
            for k in components
        ]
        if not args.no_previous:
            runs.append(("bayesgen_previous", {"num_components": 2, "anomaly": "student_t"}, [0]))
        for key, settings, seeds in runs:
            for seed in seeds:
                start = time.perf_counter()
                det = MixtureAnomalyDetector(seed=seed, **settings)
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    try:
                        det.fit(X)
                    except Exception as exc:  # a failed fit is a result: record it and go on
                        row.setdefault(key, []).append(
                            {
                                "seed": seed,
                                "settings": settings,
                                "fit_seconds": time.perf_counter() - start,
                                "error": f"{type(exc).__name__}: {exc}"[:600],
                                "num_components_": getattr(det, "num_components_", None),
                                "component_selection": _selection(det),
                            }
                        )
                        continue
                fit_seconds = time.perf_counter() - start
                fit_warnings = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
                p = det.predict_proba(X)
                row.setdefault(key, []).append(
                    {
                        "seed": seed,
                        "settings": settings,
                        "fit_seconds": fit_seconds,
                        **scores(y, -det.score_samples(X)),
                        "probability": {
                            **scores(y, p),
                            "brier": float(brier_score_loss(y, p)),
                            "mean": float(p.mean()),
                        },
                        "anomaly_fraction": det.anomaly_fraction().round(4).to_dict(),
                        "num_components_": det.num_components_,
                        "fit_warnings": fit_warnings,
                        "component_selection": _selection(det),
                    }
                )
                if key == "bayesgen" and seed == seeds[0] and args.labelled:
                    row["calibration_with_labels"] = calibration_with_labels(det, X, y, args.labelled, args.repeats)
        for seed in range(5):
            start = time.perf_counter()
            iso = IsolationForest(random_state=seed).fit(X)
            row.setdefault("isolation_forest", []).append(
                {"seed": seed, "fit_seconds": time.perf_counter() - start, **scores(y, -iso.score_samples(X))}
            )
        Z = StandardScaler().fit_transform(X)
        start = time.perf_counter()
        gm = GaussianMixture(n_components=1, covariance_type="full", random_state=0).fit(Z)
        row["gaussian_mixture_fit_seconds"] = time.perf_counter() - start
        row["gaussian_mixture"] = scores(y, -gm.score_samples(Z))
        results["sets"][name] = row
        print(
            name,
            json.dumps(
                {
                    k: row.get(k)
                    for k in (*dict.fromkeys(r[0] for r in runs), "isolation_forest", "gaussian_mixture")
                    if k in row
                }
                | {"calibration_with_labels": row.get("calibration_with_labels")}
            ),
            flush=True,
        )
    (out / f"anomaly_uci{'_' + args.tag if args.tag else ''}.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
