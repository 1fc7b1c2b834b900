"""Data-parallel SVI on torch.distributed: 2 ranks with gloo in spawned processes (tests/dist_workers.py).

One spawn runs every scenario in one process group, in order (each takes seconds; starting the
ranks takes most of the time), and the tests below read its results. The references are
one-process fits computed here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import dist_workers as dw
import numpy as np
import pytest
import torch
from scipy import stats

from bayesgen.infer import CheckpointError, IndexBatches, SVIRunner, run_svi

SCENARIOS = [
    "equivalence",
    "stochastic",
    "early_stop",
    "non_finite",
    "model_error",
    "mismatch",
    "straight",
    "resume",
    "interrupt",
    "ab_events",
    "vae",
    "prodlda",
    "anomaly",
    "generator",
]


@pytest.fixture(scope="module")
def ranks() -> dict[str, list[Any]]:
    return dw.run_ranks(SCENARIOS, world_size=2)


@pytest.fixture(scope="module")
def one_rank() -> dict[str, list[Any]]:
    return dw.run_ranks(["stochastic"], world_size=1)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def ok(results: list[Any]) -> list[Any]:
    for rank, (status, value) in enumerate(results):
        assert status == "ok", f"rank {rank} failed: {value[0]}: {value[1]}\n{value[2]}"
    return [value for _, value in results]


def errors(results: list[Any]) -> list[tuple[str, str]]:
    for rank, (status, value) in enumerate(results):
        assert status == "error", f"rank {rank} did not raise: {value}"
    return [(value[0], value[1]) for _, value in results]


class CombinedBatches(IndexBatches):
    """One process's stream of the two ranks' minibatches put together: the batch a 2-rank step sees."""

    def __init__(self, size: int, batch_size: int, seed: int) -> None:
        super().__init__(size, 2 * batch_size, seed=seed)
        self.shards = [IndexBatches(size, batch_size, seed=seed, rank=r, world_size=2) for r in range(2)]

    def __next__(self) -> torch.Tensor:
        return torch.cat([next(s) for s in self.shards])


def test_shards_have_equal_sizes_when_rows_do_not_divide() -> None:
    shards = [IndexBatches(11, 5, seed=2, rank=r, world_size=2) for r in range(2)]
    epoch = [[next(s) for _ in range(1)] for s in shards]
    assert [len(b[0]) for b in epoch] == [5, 5]
    seen = torch.cat([b[0] for b in epoch])
    assert len(set(seen.tolist())) == 10  # disjoint, one row dropped this epoch
    with pytest.raises(ValueError, match="between 1 and the 5 rows"):
        IndexBatches(11, 6, rank=0, world_size=2)


def test_two_ranks_equal_one_process_on_the_combined_batch(ranks: dict) -> None:
    r0, r1 = ok(ranks["equivalence"])
    assert r0 == r1
    # The reference: one process, the same SGD steps on both shards' rows at once (scale N / 2b).
    x, y = dw.regression_data()
    path: list[list[float]] = []
    runner = SVIRunner(
        dw.regression_model,
        dw.delta_guide,
        num_steps=5,
        optimizer=__import__("pyro").optim.SGD({"lr": 1e-4}),
        batches=CombinedBatches(dw.N_ROWS, 5, seed=0),
        seed=0,
    ).init(x, y)
    with runner.active():
        import pyro

        for _ in range(5):
            runner.step()
            path.append([float(pyro.param("w_loc").detach()), float(pyro.param("b_loc").detach())])
    np.testing.assert_allclose(r0["losses"], runner.losses, rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(r0["path"], path, rtol=0, atol=1e-10)
    # The gradients, read back from the SGD steps (lr 1e-4), agree to ~1e-10 relative as well.
    start = np.array([[0.2, -0.1]])
    grads_ranks = -np.diff(np.vstack([start, r0["path"]]), axis=0) / 1e-4
    grads_one = -np.diff(np.vstack([start, path]), axis=0) / 1e-4
    np.testing.assert_allclose(grads_ranks, grads_one, rtol=1e-8)
    assert np.abs(grads_one).min() > 1.0  # the steps move the parameters: the comparison has teeth


def test_ranks_hold_bitwise_identical_parameters_after_stochastic_steps(ranks: dict) -> None:
    r0, r1 = ok(ranks["stochastic"])
    assert r0["params"] == r1["params"]
    assert r0["losses"] == r1["losses"]
    assert len(r0["losses"]) == 20


def test_one_rank_through_the_distributed_path_equals_the_ordinary_path_bitwise(one_rank: dict) -> None:
    (dp,) = ok(one_rank["stochastic"])
    with one_thread():  # as each rank runs
        plain = dw.adam_fit(batch_size=5)
    assert dp["losses"] == plain["losses"]
    assert dp["params"] == plain["params"]


def test_a_stop_asked_for_on_one_rank_stops_every_rank_after_the_same_step(ranks: dict) -> None:
    r0, r1 = ok(ranks["early_stop"])
    assert len(r0["losses"]) == len(r1["losses"]) == 4
    assert r0["stop_reason"] == r1["stop_reason"] == "callback"
    assert r0["params"] == r1["params"]


def test_a_nan_on_one_rank_ends_every_rank_with_the_same_error(ranks: dict) -> None:
    (t0, m0), (t1, m1) = errors(ranks["non_finite"])
    assert t0 == t1 == "NonFiniteLossError"
    assert m0 == m1
    assert "site 'y'" in m0 or "'y'" in m0
    assert "rank" in m0


def test_an_exception_on_one_rank_is_raised_on_every_rank(ranks: dict) -> None:
    (t0, m0), (t1, m1) = errors(ranks["model_error"])
    assert t1 == "RuntimeError" and m1.startswith("the model broke on rank 1")
    assert t0 == "DistributedError"
    assert "rank 1" in m0 and "the model broke on rank 1" in m0


def test_ranks_with_different_data_refuse_to_start(ranks: dict) -> None:
    (t0, m0), (t1, m1) = errors(ranks["mismatch"])
    assert t0 == t1 == "ValueError"
    assert m0 == m1
    assert "rank 1 has data=" in m0


def test_a_pause_on_one_rank_resumes_to_the_uninterrupted_run(ranks: dict) -> None:
    straight = ok(ranks["straight"])[0]
    r0, r1 = ok(ranks["resume"])
    assert len(r0["first"]["losses"]) == len(r1["first"]["losses"]) == 5
    assert r0["first"]["stop_reason"] == "callback"
    assert r0["second"]["params"] == r1["second"]["params"]
    assert r0["second"]["losses"] == straight["losses"]
    assert r0["second"]["params"] == straight["params"]


def test_ctrl_c_on_one_rank_interrupts_every_rank_and_resumes_exactly(ranks: dict) -> None:
    straight = ok(ranks["straight"])[0]
    r0, r1 = ok(ranks["interrupt"])
    assert r0["interrupted"] == r1["interrupted"] == "KeyboardInterrupt"
    assert r0["resumed"]["params"] == r1["resumed"]["params"]
    assert r0["resumed"]["losses"] == straight["losses"]
    assert r0["resumed"]["params"] == straight["params"]


def test_two_rank_ab_events_fit_recovers_the_closed_form(ranks: dict) -> None:
    r0, r1 = ok(ranks["ab_events"])
    assert r0 == r1
    assert r0["data_path"] == "events"
    (ea, eb), (sa, sb) = np.array(r0["exact"]), np.array(r0["svi"])
    exact_mean, exact_sd = stats.beta.mean(ea, eb), stats.beta.std(ea, eb)
    svi_mean, svi_sd = stats.beta.mean(sa, sb), stats.beta.std(sa, sb)
    assert np.all(np.abs(svi_mean - exact_mean) < 0.25 * exact_sd)
    assert np.all(np.abs(svi_sd / exact_sd - 1) < 0.2)


def test_a_two_rank_checkpoint_does_not_resume_in_one_process(ranks: dict, tmp_path: Any) -> None:
    ok(ranks["resume"])
    x, y = dw.regression_data()
    state = {"format": "bayesgen-svi-checkpoint", "version": 1, "world_size": 2}
    runner = SVIRunner(dw.regression_model, dw.normal_guide, num_steps=3, data_size=dw.N_ROWS, batch_size=5).init(x, y)
    with pytest.raises(CheckpointError, match="2 rank"):
        runner.load_state_dict(state)


def test_distributed_needs_a_minibatch_and_a_launch() -> None:
    import pandas as pd

    from bayesgen import BetaBinomialTest

    events = pd.DataFrame({"variant": ["A", "B"] * 20, "converted": [0, 1, 1, 0] * 10})
    with pytest.raises(ValueError, match="batch_size"):
        BetaBinomialTest().fit_events(events, variant_col="variant", outcome_col="converted", distributed=True)
    x, y = dw.regression_data()
    with pytest.raises(ValueError, match="batch_size"):
        run_svi(dw.regression_model, dw.normal_guide, x, y, num_steps=2, distributed=True)
    with pytest.raises(ValueError, match="torchrun"):
        run_svi(dw.regression_model, dw.normal_guide, x, y, num_steps=2, data_size=40, batch_size=5, distributed=True)


def test_two_rank_vae_reaches_the_one_process_heldout_elbo(ranks: dict) -> None:
    r0, r1 = ok(ranks["vae"])
    assert r0 == r1
    with one_thread():  # as each rank runs
        one = [dw.vae_heldout_elbo(batch_size=64, seed=seed) for seed in (0, 1)]
    noise = abs(one[0] - one[1])
    assert abs(r0 - one[0]) < max(3 * noise, 0.02 * abs(one[0])), (r0, one)


def test_two_rank_prodlda_ends_identical_on_every_rank(ranks: dict) -> None:
    # Batch norm's running statistics are averaged over the ranks at each step, and the validation ELBO
    # is drawn from a stream seeded by the epoch: the ranks make the same early-stopping decisions.
    r0, r1 = ok(ranks["prodlda"])
    assert r0["params"] == r1["params"]
    assert r0["buffers"] == r1["buffers"]
    assert r0["history"] == r1["history"]
    assert len(r0["history"]["val_elbo"]) >= 2


def test_two_rank_anomaly_detector_agrees_with_one_process(ranks: dict) -> None:
    r0, r1 = ok(ranks["anomaly"])
    assert r0["params"] == r1["params"]
    with one_thread():  # as each rank runs
        one = dw.anomaly_fraction(batch_size=256)
    assert abs(r0["fraction"] - 0.05) < 0.02
    assert abs(r0["fraction"] - one["fraction"]) < 0.015


def test_two_rank_generator_svi_classifies_the_digits(ranks: dict) -> None:
    r0, r1 = ok(ranks["generator"])
    assert r0["params"] == r1["params"]
    assert r0["accuracy"] > 0.85  # a diagonal Gaussian per digit classifies its training digits this well


@pytest.mark.cuda
def test_one_nccl_rank_equals_the_ordinary_cuda_path() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    (dp,) = ok(dw.run_ranks(["stochastic_cuda"], world_size=1, backend="nccl")["stochastic_cuda"])
    plain = dw.adam_fit(batch_size=5, device="cuda")
    assert dp["losses"] == plain["losses"]
    assert dp["params"] == plain["params"]
