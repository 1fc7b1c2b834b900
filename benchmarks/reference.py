"""Benchmark: every global site of every shipped spec's fit against its exact posterior.

Fits each spec under models/ as shipped (specs whose data are not installed are listed as
skipped), runs :func:`bayesgen.diagnostics.reference_check` on the fitted estimator and writes
one table: site, SVI mean/sd, reference mean/sd, standardised mean gap, sd ratio, verdict,
plus the sites without a closed form and why. Output: benchmarks/results/reference.csv and a
Markdown table on stdout (pasted into benchmarks/RESULTS.md).

Run:  python benchmarks/reference.py [--only ab_resume_callbacks,gaussian_digits] [--device cpu]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from bayesgen.diagnostics import reference_check
from bayesgen.runs.spec import fit_spec, load_spec

SPECS = Path(__file__).resolve().parents[1] / "models"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default=None, help="comma-separated spec names (default: every spec)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--num-samples", type=int, default=4000)
    parser.add_argument("--results", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    names = args.only.split(",") if args.only else sorted(p.stem for p in SPECS.glob("*.toml"))
    rows, notes = [], []
    for name in names:
        spec = load_spec(SPECS / f"{name}.toml")
        started = time.perf_counter()
        try:
            est = fit_spec(spec, args.device).estimator
        except (ValueError, OSError, ImportError) as err:
            notes.append(f"| {name} | skipped: {str(err).splitlines()[0]} |")
            continue
        check = reference_check(est, num_samples=args.num_samples, seed=0)
        seconds = time.perf_counter() - started
        for parameter, r in check.table.iterrows():
            rows.append({"spec": name, "parameter": parameter, **r.to_dict()})
        for site, why in check.unchecked.items():
            notes.append(f"| {name} | `{site}`: {why} |")
        print(f"{name}: {check.message()} ({seconds:.0f} s)", flush=True)
    table = pd.DataFrame(rows)
    Path(args.results).mkdir(parents=True, exist_ok=True)
    table.to_csv(Path(args.results) / "reference.csv", index=False)
    print("\n| spec | parameter | SVI mean | SVI sd | exact mean | exact sd | mean gap (sd) | sd ratio | ok |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['spec']} | `{r['parameter']}` | {r['svi_mean']:.4g} | {r['svi_sd']:.3g} | {r['ref_mean']:.4g} | "
            f"{r['ref_sd']:.3g} | {r['smd']:+.3f} | {r['sd_ratio']:.3f} | {'yes' if r['ok'] else 'NO'} |"
        )
    print("\n| spec | site without a closed form |\n|---|---|")
    print("\n".join(notes))


if __name__ == "__main__":
    main()
