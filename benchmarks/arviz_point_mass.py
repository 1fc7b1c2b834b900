"""Time to_datatree on an AutoDelta guide of an enumerated two-component mixture (100 rows).

Usage: python benchmarks/arviz_point_mass.py NUM_SAMPLES
"""

import sys
import time

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import config_enumerate
from pyro.infer.autoguide import AutoDelta

from bayesgen.arviz import to_datatree
from bayesgen.infer import run_svi

y = torch.cat(
    [
        torch.randn(60, generator=torch.Generator().manual_seed(0)) - 2.5,
        torch.randn(40, generator=torch.Generator().manual_seed(1)) * 0.7 + 2.0,
    ]
)


@config_enumerate
def mixture(y):
    w = pyro.sample("w", dist.Dirichlet(torch.ones(2)))
    mu = pyro.sample("mu", dist.Normal(torch.tensor([-1.0, 1.0]), 5.0).to_event(1))
    with pyro.plate("obs", y.shape[0]):
        z = pyro.sample("z", dist.Categorical(w))
        pyro.sample("y", dist.Normal(mu[z], 1.0), obs=y)


guide = AutoDelta(poutine.block(mixture, hide=["z"]))
fit = run_svi(mixture, guide, y, num_steps=100, learning_rate=0.05, loss="trace_enum", max_plate_nesting=1, seed=0)
start = time.perf_counter()
tree = to_datatree(mixture, guide, y, param_state=fit.param_state, num_samples=int(sys.argv[1]))
print(
    f"{sys.argv[1]} draws requested: {time.perf_counter() - start:.2f} s, posterior sizes {dict(tree.posterior.sizes)}"
)
