"""Benchmark: the anomaly spec's SVI posterior against NUTS on a subsample of its columns (and rows).

The shipped spec (models/anomaly_breast_cancer.toml: 569 rows × 30 features, full covariance)
has about 1,000 latent numbers, beyond NUTS here. This fits the spec's settings with one normal
component on a few columns of scikit-learn's breast cancer table, runs NUTS on the same model
(the estimator's model, `pyro.infer.NUTS`, several chains), and compares every scalar parameter:
SVI mean/sd, NUTS mean/sd, standardised mean gap, sd ratio, and the goal of issue 27
(|gap| ≤ 0.25 NUTS sd and |sd ratio − 1| ≤ 0.2).

The posterior has a second mode, where the anomaly component is a copy of the normal one
(``anomaly_excess`` near 0, the fraction unidentified); NUTS chains can settle there. Only the
chains in the mode SVI reports (``anomaly_excess`` above 0.1) are compared, and how many there
were is printed. With two normal components the components can also swap labels between
chains, which is why this uses one.

The NUTS draws are cached in benchmarks/results/anomaly_nuts_draws_<columns>_<rows>.npz (with the
settings that made them); a later run with the same settings reuses them (``--rerun-nuts`` to redraw),
so only the SVI side is refitted.

``--data pima`` takes six columns of mlbench's PimaIndiansDiabetes instead (pregnancies, glucose,
blood pressure, body mass index, pedigree, age; 768 rows, where zeros stand for missing glucose,
pressure and mass values): a second table, not used to design the guide. It needs pyreadr and
Debian's r-cran-mlbench (``--mlbench`` names the folder of its .rda files).

Run:  python benchmarks/anomaly_nuts_reference.py [--columns "weakly correlated"] [--rows N] [--chains 4]
      python benchmarks/anomaly_nuts_reference.py --data pima --mlbench PATH
Output: benchmarks/results/anomaly_nuts_reference.csv and a summary per site on stdout.
"""

from __future__ import annotations

import argparse
import math
import re
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pyro.infer import MCMC, NUTS
from sklearn.datasets import load_breast_cancer

from bayesgen.models.anomaly import MixtureAnomalyDetector

COLUMNS = {"weakly correlated": [1, 4, 8, 9, 11, 14], "first six": [0, 1, 2, 3, 4, 5]}
PIMA_COLUMNS = ["pregnant", "glucose", "pressure", "mass", "pedigree", "age"]


def load_table(data: str, columns: str, mlbench: str | None) -> tuple[np.ndarray, str]:
    """The rows to fit and the label the results and the cache go under."""
    if data == "pima":
        from bayesgen.datasets import load_mlbench

        return load_mlbench("PimaIndiansDiabetes", mlbench)[PIMA_COLUMNS].to_numpy(float), "pima six"
    return load_breast_cancer().data[:, COLUMNS[columns]], columns


def flat(draws: dict[str, np.ndarray], lead: int) -> dict[str, np.ndarray]:
    """Every scalar of every site, by ArviZ-style name, from draws with ``lead`` leading sample dims."""
    out = {}
    for name, value in draws.items():
        value = np.asarray(value, dtype=float)
        shape = value.shape[lead:]
        for index in np.ndindex(shape):
            label = name if not index else f"{name}[{', '.join(map(str, index))}]"
            out[label] = value[(..., *index)].reshape(-1) if lead == 1 else value[(..., *index)]
    return out


def compare(name: str, svi: np.ndarray, ref: np.ndarray) -> dict[str, object]:
    """One parameter's SVI and reference moments, standardised mean gap, sd ratio and issue 27's goal."""
    gap = (svi.mean() - ref.mean()) / ref.std()
    ratio = svi.std() / ref.std()
    return {
        "parameter": name,
        "svi_mean": svi.mean(),
        "svi_sd": svi.std(),
        "nuts_mean": ref.mean(),
        "nuts_sd": ref.std(),
        "gap_sd": gap,
        "sd_ratio": ratio,
        "meets_goal": abs(gap) <= 0.25 and abs(ratio - 1) <= 0.2,
    }


def site_summary(table: pd.DataFrame, **extra: tuple) -> pd.DataFrame:
    """Per site: parameters, how many meet the goal, the worst and median |gap|, the sd ratios (and ``extra``)."""
    site = table["parameter"].map(lambda s: re.sub(r"\[.*", "", s))
    return (
        table.assign(site=site)
        .groupby("site")
        .agg(
            parameters=("meets_goal", "size"),
            meet=("meets_goal", "sum"),
            worst_gap=("gap_sd", lambda v: v.abs().max()),
            median_gap=("gap_sd", lambda v: v.abs().median()),
            sd_ratio_min=("sd_ratio", "min"),
            sd_ratio_median=("sd_ratio", "median"),
            sd_ratio_max=("sd_ratio", "max"),
            **extra,
        )
    )


def nuts_chains(
    estimator: Any, args: argparse.Namespace, cache: Path, rerun: bool = False
) -> tuple[list[dict[str, np.ndarray]], float, bool]:
    """NUTS chains (``args.chains`` of ``args.warmup`` + ``args.samples``, chain c seeded c) of a fitted
    estimator's model, read from ``cache`` when it holds the same settings.

    Returns the chains' draws by site, the seconds they took when drawn, and whether they came from the cache.
    """
    model, _ = estimator._model_and_guide(for_arviz=True)
    model_args, model_kwargs = estimator._model_args(for_arviz=True)
    chains, warmup, samples = args.chains, args.warmup, args.samples
    settings = np.array([chains, warmup, samples])
    if cache.is_file() and not rerun:
        with np.load(cache) as stored:
            if np.array_equal(stored["settings"], settings):
                names = sorted({k.split(".", 1)[1] for k in stored.files if k.startswith("chain")})
                draws = [{k: stored[f"chain{c}.{k}"] for k in names} for c in range(chains)]
                return draws, float(stored["seconds"]) if "seconds" in stored.files else math.nan, True
    draws = []
    started = time.perf_counter()
    for chain in range(chains):
        torch.manual_seed(chain)
        mcmc = MCMC(
            NUTS(model, max_plate_nesting=estimator._max_plate_nesting),
            num_samples=samples,
            warmup_steps=warmup,
            disable_progbar=True,
        )
        mcmc.run(*model_args, **model_kwargs)
        draws.append({k: v.numpy() for k, v in mcmc.get_samples().items()})
    seconds = time.perf_counter() - started
    cache.parent.mkdir(exist_ok=True)
    np.savez_compressed(
        cache,
        settings=settings,
        seconds=seconds,
        **{f"chain{c}.{k}": v for c, chain in enumerate(draws) for k, v in chain.items()},
    )
    return draws, seconds, False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=("sklearn", "pima"), default="sklearn")
    parser.add_argument("--mlbench", default=None, help="folder of mlbench's .rda files (--data pima)")
    parser.add_argument("--columns", choices=list(COLUMNS), default="weakly correlated")
    parser.add_argument("--rows", type=int, default=None, help="the first ROWS rows (default: all)")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--rerun-nuts", action="store_true", help="redraw NUTS even where a cache exists")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    X, label = load_table(args.data, args.columns, args.mlbench)
    X = X[: args.rows] if args.rows else X
    cache = Path(__file__).parent / "results" / f"anomaly_nuts_draws_{label.replace(' ', '_')}_{len(X)}.npz"
    started = time.perf_counter()
    det = MixtureAnomalyDetector(num_components=1, covariance="full", seed=0).fit(X)
    fit_seconds = time.perf_counter() - started
    print(f"SVI fit {fit_seconds:.1f} s")
    chains, seconds, cached = nuts_chains(det, args, cache, rerun=args.rerun_nuts)
    if cached:
        print(f"NUTS draws from {cache} ({seconds:.0f} s when drawn)")
    in_mode = [bool(np.median(c["anomaly_excess"]) > 0.1) for c in chains]
    kept = [c for c, ok in zip(chains, in_mode, strict=True) if ok]
    print(
        f"{label}, {len(X)} rows: NUTS {seconds:.0f} s; chains in SVI's mode (anomaly_excess > 0.1): "
        f"{len(kept)} of {len(chains)}; the others' median anomaly_excess "
        f"{[round(float(np.median(c['anomaly_excess'])), 3) for c, ok in zip(chains, in_mode, strict=True) if not ok]}"
    )
    if not kept:
        return
    nuts = flat({k: np.concatenate([c[k] for c in kept]) for k in kept[0]}, 1)
    shapes = {k: v.shape[1:] for k, v in kept[0].items()}
    svi = flat({k: v.reshape(-1, *shapes[k]) for k, v in det.posterior(4000, seed=0).items() if k in shapes}, 1)
    rows = []
    for name, ref in nuts.items():
        if name not in svi or ref.std() == 0:  # constant entries of the Cholesky factor
            continue
        rows.append({"columns": label, "rows": len(X), **compare(name, svi[name], ref)})
    table = pd.DataFrame(rows)
    print(site_summary(table).round(3).to_string())
    out = Path(__file__).parent / "results" / "anomaly_nuts_reference.csv"
    out.parent.mkdir(exist_ok=True)
    previous = pd.read_csv(out) if out.is_file() else pd.DataFrame()
    if len(previous):
        previous = previous[~((previous["columns"] == label) & (previous["rows"] == len(X)))]
    pd.concat([previous, table]).to_csv(out, index=False)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
