"""SVIRunner: init / step / state_dict / load_state_dict, and run_svi as a loop over it."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from normal_models import normal_guide, normal_model
from pyro.infer import Trace_ELBO
from torch.distributions import constraints

from bayesgen.infer import CheckpointError, IndexBatches, SVIRunner, run_svi

Y = torch.linspace(-1.0, 5.0, 64)
OPTIONS = {
    "full batch": {},
    "minibatch, schedule, averaging": {
        "batch_size": 8,
        "data_size": 64,
        "lr_schedule": "cosine",
        "average_last": 5,
    },
}


def make_runner(**opts: Any) -> SVIRunner:
    return SVIRunner(normal_model, normal_guide, num_steps=20, learning_rate=0.05, seed=1, **opts).init(Y)


def params_of(runner: SVIRunner) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in runner.param_state["params"].items()}


@pytest.mark.parametrize("opts", OPTIONS.values(), ids=OPTIONS.keys())
def test_a_runner_continued_from_its_state_dict_equals_one_that_never_stopped(opts):
    straight = make_runner(**opts)
    straight_losses = [straight.step() for _ in range(20)]
    straight.apply_average()

    first = make_runner(**opts)
    losses = [first.step() for _ in range(7)]
    state = first.state_dict()
    first.step()  # the state is a snapshot: later steps leave it as it was
    buffer = io.BytesIO()
    torch.save(state, buffer)  # and it survives a file, as a checkpoint does
    buffer.seek(0)
    second = make_runner(**opts)
    second.load_state_dict(torch.load(buffer, weights_only=True))
    assert second.step_count == 7
    losses += [second.step() for _ in range(13)]
    second.apply_average()

    np.testing.assert_array_equal(losses, straight_losses)
    np.testing.assert_array_equal(second.losses, straight.losses)
    for name, value in params_of(straight).items():
        np.testing.assert_array_equal(params_of(second)[name], value, err_msg=name)


@pytest.mark.parametrize("opts", OPTIONS.values(), ids=OPTIONS.keys())
def test_run_svi_and_stepping_the_runner_by_hand_give_the_same_losses(opts):
    fit = run_svi(normal_model, normal_guide, Y, num_steps=20, learning_rate=0.05, seed=1, **opts)
    runner = make_runner(**opts)
    losses = [runner.step() for _ in range(20)]
    runner.apply_average()
    np.testing.assert_array_equal(fit.losses, losses)
    for name, value in fit.param_state["params"].items():
        np.testing.assert_array_equal(runner.param_state["params"][name].detach().numpy(), value.detach().numpy())


def test_stepping_leaves_the_callers_rng_and_param_store_alone():
    pyro.clear_param_store()
    pyro.param("mine", torch.tensor(2.0))
    torch.manual_seed(5)
    before = torch.get_rng_state()
    runner = make_runner(batch_size=8, data_size=64)
    for _ in range(3):
        runner.step()
    runner.state_dict()
    assert torch.equal(torch.get_rng_state(), before)
    assert list(pyro.get_param_store().keys()) == ["mine"]
    assert set(runner.param_state["params"]) == {"loc", "scale"}


def test_a_runner_must_be_initialised_and_a_state_must_match():
    runner = SVIRunner(normal_model, normal_guide)
    with pytest.raises(RuntimeError, match="init"):
        runner.step()
    full = make_runner()
    full.step()
    with pytest.raises(CheckpointError, match="full-batch"):
        make_runner(batch_size=8, data_size=64).load_state_dict(full.state_dict())


def seeded_model(y: torch.Tensor, seed: int = 0, device: str = "none") -> None:
    """A model whose own keywords share names with the runner's options."""
    assert device == "mine"
    mu = pyro.sample("mu", dist.Normal(y.new_tensor(float(seed)), 1.0))
    with pyro.plate("obs", len(y)):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def seeded_guide(y: torch.Tensor, seed: int = 0, device: str = "none") -> None:
    assert device == "mine"
    loc = pyro.param("loc", y.new_tensor(float(seed)))
    scale = pyro.param("scale", y.new_tensor(0.1), constraint=constraints.positive)
    pyro.sample("mu", dist.Normal(loc, scale))


def test_model_keywords_named_like_runner_options_pass_through_model_kwargs():
    y = torch.zeros(3)
    fit = run_svi(
        seeded_model, seeded_guide, model_args=(y,), model_kwargs={"seed": 7, "device": "mine"}, num_steps=1, seed=0
    )
    # The guide saw seed=7 (its loc starts there), the runner seeded itself with 0.
    assert abs(float(fit.params["loc"]) - 7.0) < 0.1
    assert fit.seed == 0
    runner = SVIRunner(seeded_model, seeded_guide, seed=0).init(y, seed=7, device="mine")
    assert np.isfinite(runner.step())
    with pytest.raises(TypeError, match="both"):
        run_svi(seeded_model, seeded_guide, y, model_args=(y,), num_steps=1)
    with pytest.raises(TypeError, match="both"):
        run_svi(seeded_model, seeded_guide, y, model_kwargs={"scale": 1.0}, num_steps=1, scale=2.0)


def test_a_step_takes_its_rows_from_the_batches_object_it_is_given():
    built = make_runner(batch_size=8, data_size=64)
    given = make_runner(batches=IndexBatches(64, 8, seed=1))
    np.testing.assert_array_equal([built.step() for _ in range(10)], [given.step() for _ in range(10)])
    # One rank's shard: every index a step sees belongs to that rank.
    seen: list[torch.Tensor] = []

    class Recording(IndexBatches):
        def __next__(self) -> torch.Tensor:
            seen.append(super().__next__())
            return seen[-1]

    shard = Recording(64, 8, seed=1, rank=1, world_size=2)
    runner = make_runner(batches=shard)
    assert runner.batches is shard and runner.data_size == 64 and runner.batch_size == 8
    for _ in range(4):
        runner.step()
    full = torch.randperm(64, generator=torch.Generator().manual_seed(1))
    assert set(torch.cat(seen).tolist()) == set(full[1::2].tolist())


def test_a_step_interrupted_before_its_update_leaves_no_gradients_behind(tmp_path, monkeypatch):
    original, calls = Trace_ELBO.loss_and_grads, []

    def interrupted_after_the_gradients(*args: Any, **kwargs: Any) -> float:
        out = original(*args, **kwargs)
        calls.append(out)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(Trace_ELBO, "loss_and_grads", interrupted_after_the_gradients)
    runner = SVIRunner(normal_model, normal_guide, seed=1, checkpoint=tmp_path / "fit.ckpt").init(Y)
    runner.step()
    with pytest.raises(KeyboardInterrupt):
        runner.step()
    assert runner.step_count == 1 and runner.phase == "between"
    assert all(p.grad is None or not p.grad.any() for p in runner.param_state["params"].values())
    assert (tmp_path / "fit.ckpt").is_file()


# ------------------------------------------------------------------ epochs as a runner feature
def test_epochs_record_history_stop_early_and_end_on_the_best_epoch() -> None:
    from bayesgen.infer import Epochs

    y = torch.linspace(-1.0, 3.0, 40)
    scores = iter([-5.0, -2.0, -3.0, -4.0, -1.0, -1.0])  # best at epoch 2, then two worse: stop after epoch 4
    at_epoch_end: dict[int, float] = {}

    def record(step: int, loss: float) -> None:
        if (step + 1) % 4 == 0:
            at_epoch_end[(step + 1) // 4] = float(pyro.param("loc").detach())

    epochs = Epochs(4, rows=40, validate=lambda: next(scores), patience=2)
    result = run_svi(
        normal_model,
        normal_guide,
        y,
        num_steps=40,
        learning_rate=0.1,
        data_size=40,
        batch_size=10,
        epochs=epochs,
        callback=record,
        seed=0,
    )
    assert [row["epoch"] for row in epochs.history] == [1, 2, 3, 4]
    assert [row["val_elbo"] for row in epochs.history] == [-5.0, -2.0, -3.0, -4.0]
    assert result.num_steps == 16 and result.stop_reason == "callback"
    assert epochs.best_epoch == 2
    np.testing.assert_allclose(epochs.history[0]["train_elbo"], -np.mean(result.losses[:4]) / 40)
    # The fit ends on epoch 2's parameters, not on epoch 4's.
    assert at_epoch_end[2] != at_epoch_end[4]
    assert float(result.params["loc"]) == pytest.approx(at_epoch_end[2], abs=0)


def test_epochs_refuse_patience_without_validation_and_a_second_extra_state() -> None:
    from bayesgen.infer import Epochs

    with pytest.raises(ValueError, match="patience needs validate"):
        Epochs(4, patience=2)
    y = torch.linspace(-1.0, 3.0, 40)
    with pytest.raises(TypeError, match="extra_state"):
        run_svi(normal_model, normal_guide, y, num_steps=4, epochs=Epochs(4), extra_state=Epochs(4))
