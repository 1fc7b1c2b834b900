"""Data-parallel fits run in spawned processes for tests/test_distributed.py (2 ranks, gloo, file rendezvous).

:func:`run_ranks` starts ``world_size`` processes, each of which joins one process group and runs
the named scenarios in order; every scenario returns a picklable result or the exception it raised
(type name and message), per rank. A rank that does not finish in time is killed and reported, so
a hang fails the test instead of stalling the suite.
"""

from __future__ import annotations

import datetime
import multiprocessing as mp
import os
import queue
import signal
import tempfile
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints

N_ROWS = 40  # rows of the regression data; each rank's shard is N_ROWS // world_size


def regression_data(n: int = N_ROWS) -> tuple[torch.Tensor, torch.Tensor]:
    """A small linear regression in float64 (x, y) with known slope 1.5 and intercept -0.5."""
    g = torch.Generator().manual_seed(7)
    x = torch.linspace(-2.0, 2.0, n, dtype=torch.float64)
    y = 1.5 * x - 0.5 + 0.3 * torch.randn(n, generator=g, dtype=torch.float64)
    return x, y


def regression_model(x: torch.Tensor, y: torch.Tensor, subsample: torch.Tensor | None = None) -> None:
    w = pyro.sample("w", dist.Normal(torch.tensor(0.0, dtype=x.dtype), 10.0))
    b = pyro.sample("b", dist.Normal(torch.tensor(0.0, dtype=x.dtype), 10.0))
    with pyro.plate("rows", len(x), subsample=subsample) as i:
        pyro.sample("y", dist.Normal(w * x[i] + b, 0.3), obs=y[i])


def delta_guide(x: torch.Tensor, y: torch.Tensor, subsample: torch.Tensor | None = None) -> None:
    """A deterministic guide: the parameter path depends on the data and the update only."""
    w = pyro.param("w_loc", torch.tensor(0.2, dtype=x.dtype))
    b = pyro.param("b_loc", torch.tensor(-0.1, dtype=x.dtype))
    pyro.sample("w", dist.Delta(w))
    pyro.sample("b", dist.Delta(b))


def normal_guide(x: torch.Tensor, y: torch.Tensor, subsample: torch.Tensor | None = None) -> None:
    """A stochastic guide with created-on-first-use parameters."""
    for name in ("w", "b"):
        loc = pyro.param(f"{name}_loc", torch.tensor(0.0, dtype=x.dtype))
        scale = pyro.param(f"{name}_scale", torch.tensor(0.5, dtype=x.dtype), constraint=constraints.positive)
        pyro.sample(name, dist.Normal(loc, scale))


def sgd_path(**options: Any) -> dict[str, Any]:
    """Five SGD steps of the regression with the Delta guide: losses and the parameters after each step."""
    from bayesgen.infer import run_svi

    x, y = regression_data()
    path: list[list[float]] = []

    def record(step: int, loss: float) -> None:
        path.append([float(pyro.param("w_loc").detach()), float(pyro.param("b_loc").detach())])

    result = run_svi(
        regression_model,
        delta_guide,
        x,
        y,
        num_steps=5,
        optimizer=pyro.optim.SGD({"lr": 1e-4}),
        data_size=N_ROWS,
        callback=record,
        seed=0,
        **options,
    )
    return {"losses": result.losses.tolist(), "path": path}


def adam_fit(num_steps: int = 20, **options: Any) -> dict[str, Any]:
    """Adam on the regression with a stochastic guide: losses and the exact bytes of every parameter."""
    from bayesgen.infer import run_svi

    x, y = regression_data()
    result = run_svi(
        regression_model,
        normal_guide,
        x,
        y,
        num_steps=num_steps,
        learning_rate=0.05,
        data_size=N_ROWS,
        seed=3,
        **options,
    )
    raw = {k: v.detach().cpu().numpy().tobytes() for k, v in result.param_state["params"].items()}
    return {"losses": result.losses.tolist(), "params": raw, "stop_reason": result.stop_reason}


# ---------------------------------------------------------------- scenarios (one process group, in order)
def _equivalence(dp: Any) -> Any:
    return sgd_path(batch_size=5, distributed=dp)


def _stochastic(dp: Any) -> Any:
    return adam_fit(batch_size=5, distributed=dp)


def _stochastic_cuda(dp: Any) -> Any:
    return adam_fit(batch_size=5, distributed=dp, device="cuda")


def _straight(dp: Any) -> Any:
    return adam_fit(num_steps=12, batch_size=5, distributed=dp)


def _early_stop(dp: Any) -> Any:
    # Only rank 0's callback asks to stop, after step 3.
    return adam_fit(batch_size=5, distributed=dp, callback=lambda step, loss: dp.rank == 0 and step == 3)


def _non_finite(dp: Any) -> Any:
    from bayesgen.infer import run_svi

    x, y = regression_data()
    y = y.clone()
    y[5] = float("nan")  # rank 0's first shard holds it or rank 1's does: one rank only
    run_svi(regression_model, normal_guide, x, y, num_steps=5, data_size=N_ROWS, batch_size=N_ROWS // 2, distributed=dp)


def _model_error(dp: Any) -> Any:
    from bayesgen.infer import run_svi

    x, y = regression_data()
    calls = {"n": 0}

    def model(x: torch.Tensor, y: torch.Tensor, subsample: torch.Tensor | None = None) -> None:
        calls["n"] += 1
        if dp.rank == 1 and calls["n"] == 4:
            raise RuntimeError("the model broke on rank 1")
        regression_model(x, y, subsample)

    run_svi(model, normal_guide, x, y, num_steps=6, data_size=N_ROWS, batch_size=5, distributed=dp)


def _mismatch(dp: Any) -> Any:
    from bayesgen.infer import run_svi

    x, y = regression_data()
    if dp.rank == 1:
        y = y + 1.0
    run_svi(regression_model, normal_guide, x, y, num_steps=3, data_size=N_ROWS, batch_size=5, distributed=dp)


def _resume(dp: Any, folder: Path) -> Any:
    """A pause by rank 1's callback after step 4, then resume: both written to one checkpoint file."""
    ckpt = folder / "pause.pt"
    first = adam_fit(
        num_steps=12,
        batch_size=5,
        distributed=dp,
        checkpoint=ckpt,
        callback=lambda step, loss: dp.rank == 1 and step == 4,
    )
    second = adam_fit(num_steps=12, batch_size=5, distributed=dp, checkpoint=ckpt, resume=True)
    return {"first": first, "second": second}


def _interrupt(dp: Any, folder: Path) -> Any:
    """Ctrl-C on rank 1 after step 6 (a real SIGINT), then resume from the checkpoint it leaves."""
    ckpt = folder / "interrupt.pt"

    def ctrl_c(step: int, loss: float) -> None:
        if dp.rank == 1 and step == 6:
            os.kill(os.getpid(), signal.SIGINT)

    try:
        adam_fit(num_steps=12, batch_size=5, distributed=dp, checkpoint=ckpt, callback=ctrl_c)
        interrupted = "no interrupt"
    except KeyboardInterrupt:
        interrupted = "KeyboardInterrupt"
    resumed = adam_fit(num_steps=12, batch_size=5, distributed=dp, checkpoint=ckpt, resume=True)
    return {"interrupted": interrupted, "resumed": resumed}


def _ab_events(dp: Any) -> Any:
    import pandas as pd

    from bayesgen import BetaBinomialTest

    rng = np.random.default_rng(11)
    variant = np.repeat(["A", "B"], [1500, 1300])
    outcome = np.concatenate([rng.random(1500) < 0.08, rng.random(1300) < 0.11]).astype(int)
    events = pd.DataFrame({"variant": variant, "converted": outcome})
    test = BetaBinomialTest(batch_size=200, num_steps=800, device="cpu", seed=0)
    test.fit_events(events, variant_col="variant", outcome_col="converted", distributed=dp)
    return {
        "data_path": test.data_path_,
        "exact": [test.exact_alpha_.tolist(), test.exact_beta_.tolist()],
        "svi": [test.posterior_alpha_.tolist(), test.posterior_beta_.tolist()],
    }


def digits_split() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits in [0, 1]: 1,500 training rows and 297 held out."""
    from sklearn.datasets import load_digits

    x = load_digits().data.astype(np.float32) / 16.0
    return x[:1500], x[1500:]


def vae_heldout_elbo(batch_size: int, seed: int = 0, distributed: Any = False) -> float:
    """A small VAE on the digits: the mean held-out ELBO per image after 6 epochs."""
    from bayesgen import VAE

    train, held_out = digits_split()
    vae = VAE(hidden_dims=(64,), latent_dim=4, num_epochs=6, batch_size=batch_size, device="cpu", seed=seed)
    vae.fit(train, distributed=distributed)
    return float(np.mean(vae.elbo(held_out, num_samples=20, seed=0)))


def _vae(dp: Any) -> Any:
    return vae_heldout_elbo(batch_size=32, distributed=dp)  # 32 rows per rank: 64 per step, as one process


def topic_counts() -> np.ndarray:
    """400 documents of 40-80 words from 3 known topics over 60 words (a document-term matrix)."""
    rng = np.random.default_rng(5)
    topics = rng.dirichlet(np.full(60, 0.1), size=3)
    theta = rng.dirichlet(np.full(3, 0.3), size=400)
    return np.stack([rng.multinomial(rng.integers(40, 81), t @ topics) for t in theta])


def _prodlda(dp: Any) -> Any:
    """ProdLDA with batch norm, dropout, validation and early stopping: every rank must end identical."""
    from bayesgen import ProdLDA

    counts = topic_counts()
    model = ProdLDA(num_topics=3, hidden_dim=32, num_epochs=8, batch_size=25, patience=2, device="cpu", seed=0)
    model.fit(counts[:320], validation=counts[320:], distributed=dp)
    raw = {k: v.detach().numpy().tobytes() for k, v in model._param_state["params"].items()}
    buffers = {k: v.numpy().tobytes() for k, v in model._buffers().items()}
    return {"params": raw, "buffers": buffers, "history": model.history_.drop(columns="seconds").to_dict("list")}


def anomaly_table() -> np.ndarray:
    """1,200 rows of a correlated 3-D Gaussian with 60 planted far rows (known anomaly share 0.05)."""
    rng = np.random.default_rng(9)
    normal = rng.multivariate_normal([0, 1, -1], [[1, 0.5, 0], [0.5, 1, 0.3], [0, 0.3, 1]], size=1140)
    far = rng.uniform(-8, 8, size=(60, 3))
    return np.vstack([normal, far])


def anomaly_fraction(batch_size: int, distributed: Any = False) -> dict[str, Any]:
    from bayesgen import MixtureAnomalyDetector

    det = MixtureAnomalyDetector(batch_size=batch_size, num_steps=300, device="cpu", seed=0)
    det.fit(anomaly_table(), distributed=distributed)
    raw = {k: v.detach().numpy().tobytes() for k, v in det._param_state["params"].items()}
    return {"fraction": float(det.anomaly_fraction()["mean"]), "params": raw}


def _anomaly(dp: Any) -> Any:
    return anomaly_fraction(batch_size=128, distributed=dp)


def generator_fit(distributed: Any = False) -> dict[str, Any]:
    """The Gaussian generator's SVI path on the digits (diagonal covariance, 200 rows per step)."""
    from sklearn.datasets import load_digits

    from bayesgen import GaussianGenerator

    digits = load_digits()
    batch = 100 if distributed else 200
    gen = GaussianGenerator(
        covariance="diag", constant_features="keep", batch_size=batch, num_steps=300, device="cpu", seed=0
    )
    gen.fit(digits.data / 16.0, digits.target, distributed=distributed)
    raw = {k: v.detach().numpy().tobytes() for k, v in gen._param_state["params"].items()}
    accuracy = float((gen.predict(digits.data / 16.0) == digits.target).mean())
    return {"params": raw, "accuracy": accuracy}


def _generator(dp: Any) -> Any:
    return generator_fit(distributed=dp)


SCENARIOS = {
    "generator": _generator,
    "anomaly": _anomaly,
    "prodlda": _prodlda,
    "vae": _vae,
    "equivalence": _equivalence,
    "stochastic": _stochastic,
    "straight": _straight,
    "stochastic_cuda": _stochastic_cuda,
    "early_stop": _early_stop,
    "non_finite": _non_finite,
    "model_error": _model_error,
    "mismatch": _mismatch,
    "ab_events": _ab_events,
}
WITH_FOLDER = {"resume": _resume, "interrupt": _interrupt}


def _worker(rank: int, world_size: int, folder: str, names: Sequence[str], out: Any, backend: str = "gloo") -> None:
    torch.set_num_threads(1)
    import torch.distributed as tdist

    from bayesgen.distributed import DataParallel

    if backend == "nccl":
        torch.cuda.set_device(rank)
    tdist.init_process_group(
        backend,
        init_method=f"file://{folder}/rendezvous",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=60),
    )
    dp = DataParallel.from_env()
    for name in names:
        try:
            fn = SCENARIOS.get(name)
            result = fn(dp) if fn is not None else WITH_FOLDER[name](dp, Path(folder))
            out.put((rank, name, "ok", result))
        except BaseException as err:  # noqa: BLE001 - reported to the test
            out.put((rank, name, "error", (type(err).__name__, str(err), traceback.format_exc())))
    tdist.destroy_process_group()


def run_ranks(
    names: Sequence[str], *, world_size: int = 2, timeout: float = 240.0, backend: str = "gloo"
) -> dict[str, list[Any]]:
    """Run the scenarios ``names`` on ``world_size`` spawned ranks; ``{name: [per-rank (status, result)]}``."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    with tempfile.TemporaryDirectory() as folder:
        procs = [
            ctx.Process(target=_worker, args=(r, world_size, folder, list(names), out, backend))
            for r in range(world_size)
        ]
        for p in procs:
            p.start()
        results: dict[str, list[Any]] = {name: [None] * world_size for name in names}
        expected = len(names) * world_size
        got = 0
        try:
            while got < expected:
                rank, name, status, value = out.get(timeout=timeout)
                results[name][rank] = (status, value)
                got += 1
        except queue.Empty:
            missing = [(n, r) for n in names for r in range(world_size) if results[n][r] is None]
            raise AssertionError(f"ranks did not finish within {timeout} s (hang?): missing {missing}") from None
        finally:
            for p in procs:
                p.join(timeout=30)
                if p.is_alive():
                    p.kill()
    return results
