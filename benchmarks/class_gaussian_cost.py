"""Benchmark: the generator's per-class Gaussians against torch's per-row ones, in the same run.

``ClassMultivariateNormal`` (full covariance) and ``ClassLowRankNormal`` (low rank) give
every row the Gaussian of its class, handling one class at a time. The reference is what
the generator did before session 12 and what a plain Pyro model would write: torch's
``MultivariateNormal`` / ``LowRankMultivariateNormal`` with each class's factor copied to
every row (``scale_tril[..., y, :, :]``). Shapes are those of ``to_arviz`` on scikit-learn's
digits: S posterior draws × 1,257 rows × 64 pixels, 10 classes, rank 10.

Reports median seconds of ``log_prob`` and ``rsample`` over ``--repeats`` and the ratio
reference / ours (above 1: ours is faster), and the size of the per-row copy the reference
makes. One torch thread.

Run:  python benchmarks/class_gaussian_cost.py [--draws 100,1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import pyro.distributions as dist
import torch

from bayesgen.models.gaussian_generator import ClassLowRankNormal, ClassMultivariateNormal


def median_seconds(fn, repeats):
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return float(np.median(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", default="100,1000")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    C, d, r, n = 10, 64, 10, 1257
    index = torch.randint(0, C, (n,))
    x = torch.randn(n, d)
    rows = []
    for S in (int(v) for v in args.draws.split(",")):
        loc = torch.randn(S, C, d)
        A = torch.randn(S, C, d, d) / 8
        precision = A @ A.transpose(-1, -2) + torch.eye(d)
        W, D = torch.randn(S, C, d, r) * 0.3, torch.rand(S, C, d) + 0.1
        cases = {
            "full": (
                lambda: ClassMultivariateNormal(loc, precision, index),
                lambda: dist.MultivariateNormal(
                    loc[..., index, :],
                    scale_tril=torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(precision)))[
                        ..., index, :, :
                    ],
                ),
                S * n * d * d,
            ),
            "lowrank": (
                lambda: ClassLowRankNormal(loc, W, D, index),
                lambda: dist.LowRankMultivariateNormal(loc[..., index, :], W[..., index, :, :], D[..., index, :]),
                S * n * d * r,
            ),
        }
        for name, (ours, reference, copied) in cases.items():
            if name == "full" and S > 200:
                continue  # the reference's per-row copy alone would be 20 GB
            row = {"covariance": name, "draws": S, "reference_copy_gb": copied * 4 / 1e9}
            for verb in ("log_prob", "rsample"):
                call = (lambda make: make().log_prob(x)) if verb == "log_prob" else (lambda make: make().rsample())
                ours_s = median_seconds(lambda: call(ours), args.repeats)
                ref_s = median_seconds(lambda: call(reference), args.repeats)
                row[verb] = {"ours_s": ours_s, "reference_s": ref_s, "ratio": ref_s / ours_s}
            torch.testing.assert_close(ours().log_prob(x), reference().log_prob(x), rtol=1e-4, atol=1e-2)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(json.dumps({"machine": platform.platform(), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
