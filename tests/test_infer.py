"""Tier 1 unit tests of the SVI runner (bayesgen.infer)."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.util import is_validation_enabled
from torch.distributions import constraints

from bayesgen._runtime import TorchOutOfMemoryError
from bayesgen.infer import (
    CheckpointError,
    ConvergenceCheck,
    IndexBatches,
    NonFiniteLossError,
    param_scope,
    run_svi,
)

N = 400
Y = torch.linspace(-1.0, 5.0, N)


from normal_models import exact_normal_posterior, normal_guide, normal_model  # noqa: E402


def test_loss_falls_and_reaches_exact_posterior():
    result = run_svi(
        normal_model,
        normal_guide,
        Y,
        num_steps=1500,
        learning_rate=0.1,
        lr_schedule="cosine",
        final_lr_factor=0.01,
        seed=0,
    )
    assert result.losses[-100:].mean() < result.losses[:100].mean()
    mean, sd = exact_normal_posterior(Y)
    with param_scope(result.param_state):
        loc = pyro.param("loc").item()
        scale = pyro.param("scale").item()
    assert loc == pytest.approx(mean, abs=0.15 * sd)
    assert scale == pytest.approx(sd, rel=0.15)


def test_same_seed_same_result_and_different_seed_differs():
    a = run_svi(normal_model, normal_guide, Y, num_steps=50, seed=3)
    b = run_svi(normal_model, normal_guide, Y, num_steps=50, seed=3)
    c = run_svi(normal_model, normal_guide, Y, num_steps=50, seed=4)
    np.testing.assert_array_equal(a.losses, b.losses)
    assert not np.array_equal(a.losses, c.losses)


def test_seed_none_is_fresh_randomness_and_leaves_caller_rng_alone():
    from bayesgen._runtime import seeded

    torch.manual_seed(99)
    expected_next = torch.rand(5)
    torch.manual_seed(99)
    with seeded(None):
        first = torch.rand(5)
    with seeded(None):
        second = torch.rand(5)
    assert not torch.equal(first, second)  # neither block replays the caller's state
    np.testing.assert_array_equal(torch.rand(5), expected_next)
    # The runner, minibatch order included: two unseeded fits differ.
    a = run_svi(normal_model, normal_guide, Y, num_steps=5, seed=None, data_size=N, batch_size=10)
    b = run_svi(normal_model, normal_guide, Y, num_steps=5, seed=None, data_size=N, batch_size=10)
    assert not np.array_equal(a.losses, b.losses)
    # The drawn seed is recorded, so an unseeded fit can be repeated.
    again = run_svi(normal_model, normal_guide, Y, num_steps=5, seed=a.seed, data_size=N, batch_size=10)
    np.testing.assert_array_equal(again.losses, a.losses)


def test_leaves_caller_rng_and_param_store_alone():
    pyro.param("user_param", torch.ones(3))
    torch.manual_seed(99)
    expected_next = torch.rand(5)
    torch.manual_seed(99)
    run_svi(normal_model, normal_guide, Y, num_steps=20, seed=0)
    np.testing.assert_array_equal(torch.rand(5), expected_next)
    store = pyro.get_param_store()
    assert set(store.keys()) == {"user_param"}
    np.testing.assert_array_equal(pyro.param("user_param").detach(), torch.ones(3))


def test_two_fits_keep_separate_parameters():
    a = run_svi(normal_model, normal_guide, Y, num_steps=300, learning_rate=0.05, seed=0)
    b = run_svi(normal_model, normal_guide, Y + 10.0, num_steps=300, learning_rate=0.05, seed=0)
    assert a.param_state["params"]["loc"] is not b.param_state["params"]["loc"]
    assert b.param_state["params"]["loc"].item() - a.param_state["params"]["loc"].item() > 5.0


def test_minibatch_elbo_scaling_is_unbiased():
    # With a point-mass guide the ELBO has no Monte Carlo noise, so the scaled
    # loss of each batch of a partition averages exactly to the full-data loss.
    def point_guide(y, subsample=None):
        pyro.sample("mu", dist.Delta(pyro.param("loc", torch.tensor(1.3))))

    elbo = Trace_ELBO()
    full = elbo.loss(normal_model, point_guide, Y)
    batches = IndexBatches(N, 50, seed=0)
    losses = [elbo.loss(normal_model, point_guide, Y, subsample=next(batches)) for _ in range(N // 50)]
    assert np.mean(losses) == pytest.approx(full, rel=1e-5)
    assert np.std(losses) > 0  # the batches really differ


def test_minibatch_fit_matches_full_batch_posterior():
    result = run_svi(
        normal_model,
        normal_guide,
        Y,
        num_steps=1500,
        learning_rate=0.1,
        lr_schedule="cosine",
        final_lr_factor=0.01,
        batch_size=40,
        data_size=N,
        seed=0,
    )
    mean, sd = exact_normal_posterior(Y)
    loc = result.param_state["params"]["loc"].item()
    assert loc == pytest.approx(mean, abs=0.3 * sd)


def test_index_batches_cover_every_row_once_per_epoch_and_shard_disjointly():
    batches = IndexBatches(10, 5, seed=1)
    epoch = torch.cat([next(batches), next(batches)])
    assert sorted(epoch.tolist()) == list(range(10))
    shards = [IndexBatches(10, 5, seed=1, rank=r, world_size=2) for r in range(2)]
    seen = [set(next(s).tolist()) for s in shards]
    assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == set(range(10))
    with pytest.raises(ValueError, match="batch_size"):
        IndexBatches(10, 11)


def test_convergence_check_stops_early():
    check = ConvergenceCheck(window=50, rtol=1e-3, patience=2, noise=0.0)
    result = run_svi(normal_model, normal_guide, Y, num_steps=5000, learning_rate=0.05, convergence=check, seed=0)
    assert result.converged and result.stop_reason == "converged"
    assert result.num_steps < 5000
    flat = np.r_[np.linspace(100, 10, 300), np.full(400, 10.0)]
    assert check.converged_at(flat) is not None
    assert check.converged_at(np.linspace(100, 10, 700)) is None
    # pure noise around a constant is flat once noise is allowed for, not before
    rng = np.random.default_rng(0)
    noisy = 10.0 + rng.normal(0, 1.0, 1000)
    assert ConvergenceCheck(window=50, rtol=1e-4, patience=3, noise=0.0).converged_at(noisy) is None
    assert ConvergenceCheck(window=50, rtol=1e-4, patience=3, noise=3.0).converged_at(noisy) is not None
    # a steady downward trend is not flat even though each window is noisy
    trend = np.linspace(100, 50, 1000) + rng.normal(0, 1.0, 1000)
    assert ConvergenceCheck(window=50, rtol=1e-4, patience=3, noise=2.0).converged_at(trend) is None


@pytest.mark.parametrize("bad_value", [float("inf"), float("nan")], ids=["inf-loss", "nan-param"])
def test_non_finite_stops_with_step_and_keeps_last_good_params(tmp_path, bad_value):
    # inf reaches the loss; nan is caught by Pyro's argument validation first.
    calls = {"n": 0}

    def exploding_model(y, subsample=None):
        calls["n"] += 1
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        pyro.factor("boom", torch.tensor(bad_value if calls["n"] > 6 else 0.0))
        with pyro.plate("obs", y.shape[0]):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    good = {}

    def remember(step, loss):
        good["loc"] = pyro.param("loc").item()

    ckpt = tmp_path / "fit.ckpt"
    with pytest.raises(NonFiniteLossError, match="step 5") as info:
        run_svi(exploding_model, normal_guide, Y, num_steps=100, seed=0, callback=remember, checkpoint=ckpt)
    err = info.value
    # the runner traces the model once to create parameters, so the 7th call is step 5
    assert err.step == 5 and len(err.losses) == 5
    assert (err.site, err.origin) == ("boom", "model") and f"pyro.factor at site 'boom' is {bad_value}" in str(err)
    assert np.isfinite(err.losses).all()
    assert err.checkpoint == ckpt and ckpt.exists()
    from bayesgen.infer import load_checkpoint

    saved = load_checkpoint(ckpt)
    assert saved["step"] == 5
    assert saved["params"]["loc"].item() == pytest.approx(good["loc"])


@pytest.mark.parametrize("schedule", [None, "exponential"])
def test_stop_and_resume_reproduces_a_straight_run(tmp_path, schedule):
    # Optimiser moments, the learning-rate schedule, the batch order and the RNG
    # all continue where they stopped, so the resumed run equals an unbroken one.
    ckpt = tmp_path / "run.ckpt"
    opts = dict(num_steps=60, seed=5, batch_size=40, data_size=N, lr_schedule=schedule)
    straight = run_svi(normal_model, normal_guide, Y, **opts)
    first = run_svi(normal_model, normal_guide, Y, **opts, checkpoint=ckpt, callback=lambda step, loss: step == 29)
    assert first.stop_reason == "callback" and first.num_steps == 30
    resumed = run_svi(normal_model, normal_guide, Y, **opts, checkpoint=ckpt, resume=True)
    assert resumed.num_steps == 60
    np.testing.assert_allclose(resumed.losses, straight.losses, rtol=1e-6)
    np.testing.assert_allclose(
        resumed.param_state["params"]["loc"].item(), straight.param_state["params"]["loc"].item(), rtol=1e-6
    )


def test_keyboard_interrupt_leaves_a_usable_checkpoint(tmp_path):
    ckpt = tmp_path / "run.ckpt"

    def interrupt(step, loss):
        if step == 24:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_svi(normal_model, normal_guide, Y, num_steps=100, seed=0, checkpoint=ckpt, callback=interrupt)
    resumed = run_svi(normal_model, normal_guide, Y, num_steps=40, seed=0, checkpoint=ckpt, resume=True)
    assert resumed.num_steps == 40
    straight = run_svi(normal_model, normal_guide, Y, num_steps=40, seed=0)
    np.testing.assert_allclose(resumed.losses, straight.losses, rtol=1e-6)


@pytest.mark.parametrize(
    "error",
    [TorchOutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), KeyboardInterrupt()],
    ids=["out_of_memory", "ctrl_c"],
)
@pytest.mark.parametrize("minibatch", [False, True], ids=["full_batch", "minibatch"])
def test_a_step_stopped_halfway_is_redone_exactly_on_resume(tmp_path, error, minibatch):
    """Out of memory (or Ctrl-C) inside a step, after the guide's draw and the batch were taken: the
    checkpoint holds the state from that step's start, so the resumed run matches the straight one."""
    ckpt = tmp_path / "run.ckpt"
    calls = []

    def failing_model(y, subsample=None):
        calls.append(1)
        if len(calls) == 25:
            raise error
        normal_model(y, subsample)

    opts = {"seed": 0, **({"data_size": N, "batch_size": 8} if minibatch else {})}
    with pytest.raises(type(error)):
        run_svi(failing_model, normal_guide, Y, num_steps=100, checkpoint=ckpt, **opts)
    assert ckpt.exists()
    resumed = run_svi(normal_model, normal_guide, Y, num_steps=40, checkpoint=ckpt, resume=True, **opts)
    straight = run_svi(normal_model, normal_guide, Y, num_steps=40, **opts)
    np.testing.assert_allclose(resumed.losses, straight.losses, rtol=1e-6)


def test_out_of_memory_between_steps_keeps_every_step_and_other_errors_write_nothing(tmp_path):
    ckpt = tmp_path / "run.ckpt"

    def no_memory_at_24(step, loss):
        if step == 24:
            raise TorchOutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(TorchOutOfMemoryError):
        run_svi(normal_model, normal_guide, Y, num_steps=100, seed=0, checkpoint=ckpt, callback=no_memory_at_24)
    resumed = run_svi(normal_model, normal_guide, Y, num_steps=40, seed=0, checkpoint=ckpt, resume=True)
    straight = run_svi(normal_model, normal_guide, Y, num_steps=40, seed=0)
    np.testing.assert_allclose(resumed.losses, straight.losses, rtol=1e-6)
    # Any other error is not about memory: no checkpoint is written for it.
    other = tmp_path / "other.ckpt"
    with pytest.raises(RuntimeError, match="unrelated"):
        run_svi(
            normal_model,
            normal_guide,
            Y,
            num_steps=100,
            seed=0,
            checkpoint=other,
            callback=lambda step, loss: (_ for _ in ()).throw(RuntimeError("unrelated")),
        )
    assert not other.exists()


def test_before_step_sees_every_step_index_and_a_resumed_run_continues_the_count(tmp_path):
    ckpt = tmp_path / "run.ckpt"
    seen = []

    def record_and_stop_at_7(step):
        seen.append(step)
        if step == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_svi(normal_model, normal_guide, Y, num_steps=12, seed=0, checkpoint=ckpt, before_step=record_and_stop_at_7)
    assert seen == list(range(8))  # steps 0-6 ran; step 7 was interrupted before it started
    resumed_steps = []
    result = run_svi(
        normal_model,
        normal_guide,
        Y,
        num_steps=12,
        seed=0,
        checkpoint=ckpt,
        resume=True,
        before_step=resumed_steps.append,
    )
    assert resumed_steps == list(range(7, 12)) and result.num_steps == 12


def test_bad_checkpoints_give_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        run_svi(normal_model, normal_guide, Y, num_steps=5, resume=tmp_path / "missing.ckpt")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable"):
        run_svi(normal_model, normal_guide, Y, num_steps=5, resume=junk)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"weights": torch.ones(2)}, foreign)
    with pytest.raises(CheckpointError, match="not a bayesgen SVI checkpoint"):
        run_svi(normal_model, normal_guide, Y, num_steps=5, resume=foreign)

    def other_guide(y, subsample=None):
        pyro.sample("mu", dist.Normal(pyro.param("other_loc", torch.tensor(0.0)), 1.0))

    ckpt = tmp_path / "ok.ckpt"
    run_svi(normal_model, normal_guide, Y, num_steps=5, checkpoint=ckpt)
    with pytest.raises(CheckpointError, match="does not match"):
        run_svi(normal_model, other_guide, Y, num_steps=10, resume=ckpt)


def test_jit_and_enum_losses_and_bad_options():
    result = run_svi(
        normal_model,
        normal_guide,
        Y,
        num_steps=200,
        learning_rate=0.05,
        loss="jit_trace",
        batch_size=50,
        data_size=N,
        seed=0,
    )
    assert result.losses[-20:].mean() < result.losses[:20].mean()
    with pytest.raises(ValueError, match="max_plate_nesting"):
        run_svi(normal_model, normal_guide, Y, num_steps=1, loss="trace_enum")
    with pytest.raises(ValueError, match="loss="):
        run_svi(normal_model, normal_guide, Y, num_steps=1, loss="nope")
    with pytest.raises(ValueError, match="lr_schedule"):
        run_svi(normal_model, normal_guide, Y, num_steps=1, lr_schedule="linear")
    with pytest.raises(ValueError, match="batch_size needs data_size"):
        run_svi(normal_model, normal_guide, Y, num_steps=1, batch_size=10)


def test_enumerated_discrete_site_runs_with_trace_enum():
    data = torch.cat([torch.full((50,), -2.0), torch.full((50,), 2.0)])

    def mix_model(y, subsample=None):
        weights = pyro.sample("weights", dist.Dirichlet(torch.ones(2)))
        locs = pyro.param("locs", torch.tensor([-1.0, 1.0]))
        with pyro.plate("obs", y.shape[0]):
            z = pyro.sample("z", dist.Categorical(weights), infer={"enumerate": "parallel"})
            pyro.sample("y", dist.Normal(locs[z], 0.5), obs=y)

    def mix_guide(y, subsample=None):
        conc = pyro.param("conc", torch.ones(2), constraint=constraints.positive)
        pyro.sample("weights", dist.Dirichlet(conc))

    result = run_svi(
        mix_model, mix_guide, data, num_steps=300, learning_rate=0.05, loss="trace_enum", max_plate_nesting=1, seed=0
    )
    locs = sorted(result.param_state["params"]["locs"].tolist())
    assert locs[0] == pytest.approx(-2.0, abs=0.2) and locs[1] == pytest.approx(2.0, abs=0.2)


def test_learning_rate_schedule_decays():
    from bayesgen.infer import make_optimizer

    optim = make_optimizer("adam", learning_rate=0.1, lr_schedule="exponential", final_lr_factor=0.01, num_steps=100)
    run_svi(normal_model, normal_guide, Y, num_steps=100, optimizer=optim, seed=0)
    lrs = [s.get_last_lr()[0] for s in optim.optim_objs.values()]
    assert lrs and all(lr == pytest.approx(0.001, rel=1e-3) for lr in lrs)


@pytest.mark.cuda
def test_runs_on_cuda_tensors():
    # normal_model/normal_guide are written as in Pyro's tutorials: dist.Normal(0.0, 10.0) and
    # torch.tensor(-3.0) name no device. The runner creates such tensors on the data's GPU for the run
    # (without that, this model fails with "found at least two devices, cuda:0 and cpu": checked below).
    result = run_svi(
        normal_model,
        normal_guide,
        Y,
        num_steps=1500,
        learning_rate=0.1,
        lr_schedule="cosine",
        final_lr_factor=0.01,
        device="cuda",
        batch_size=40,
        data_size=N,
        seed=0,
    )
    assert result.device.type == "cuda"
    assert result.param_state["params"]["loc"].device.type == "cuda"
    mean, sd = exact_normal_posterior(Y)
    assert result.param_state["params"]["loc"].item() == pytest.approx(mean, abs=0.3 * sd)
    # The ArviZ bridge draws from the same model on the GPU.
    from bayesgen.arviz import to_datatree

    tree = to_datatree(normal_model, normal_guide, Y, param_state=result.param_state, device="cuda", num_samples=500)
    assert tree["log_likelihood"]["y"].shape == (4, 125, N)
    assert float(tree["posterior"]["mu"].mean()) == pytest.approx(mean, abs=0.5 * sd)
    # Without the scope (device_scope=False, for models known to be device-clean) the same model fails.
    with pytest.raises(RuntimeError, match="device"):
        run_svi(normal_model, normal_guide, Y, num_steps=5, device="cuda", device_scope=False, seed=0)
    # So do the k-hat diagnostics, on the data's device by default.
    from bayesgen.diagnostics import vi_khat

    diag = vi_khat(
        normal_model, normal_guide, Y.to("cuda"), param_state=result.param_state, num_samples=500, warn=False
    )
    assert diag.verdict in ("good", "usable"), diag.message()


def test_device_probe_skips_plate_indices_but_not_values():
    # The probe's check on site values, run against the "meta" device so that it can be exercised on
    # the CPU: a plate's own index (on the CPU unless given device=) is not a stray tensor, a value is.
    # (Counting plate indices would put every bayesgen model on a GPU in the device scope.)
    from bayesgen.infer import _stray_sites

    def model(y):
        with pyro.plate("class", 3):
            pyro.sample("w", dist.Normal(y.new_zeros(3), 1.0))

    tr = pyro.poutine.trace(model).get_trace(Y)
    assert tr.nodes["class"]["type"] == "sample"  # what the skip is for
    assert _stray_sites(torch.device("meta"), [tr]) == ["w"]
    assert _stray_sites(torch.device("cpu"), [tr]) == []


def test_a_device_clean_model_is_not_run_under_a_device_scope():
    from bayesgen.infer import _builds_tensors_off

    def clean_model(y, subsample=None):
        mu = pyro.sample("mu", dist.Normal(y.new_tensor(0.0), y.new_tensor(10.0)))
        with pyro.plate("obs", y.shape[0], subsample=subsample, device=y.device) as idx:
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y[idx])

    # On the CPU nothing can be off the device; with CUDA, only the tutorial-style model is flagged.
    assert not _builds_tensors_off(torch.device("cpu"), normal_model, normal_guide, (Y,), {})
    if torch.cuda.is_available():
        dev = torch.device("cuda")
        with param_scope({"params": {}, "constraints": {}}):
            from bayesgen._runtime import tensors_on

            with tensors_on(dev):
                pyro.param("loc", torch.tensor(-3.0))
                pyro.param("scale", torch.tensor(1.0), constraint=constraints.positive)
            assert _builds_tensors_off(dev, normal_model, normal_guide, (Y.to(dev),), {})
            assert not _builds_tensors_off(dev, clean_model, normal_guide, (Y.to(dev),), {})


def test_module_learning_rates_need_no_schedule():
    from bayesgen.infer import make_optimizer

    optim = make_optimizer(learning_rate=0.01, module_learning_rates={"decoder": 0.05})
    assert optim.pt_optim_args("decoder.beta.weight")["lr"] == 0.05
    assert optim.pt_optim_args("encoder.fc1.weight")["lr"] == 0.01
    with pytest.raises(ValueError, match="cannot be combined with lr_schedule"):
        make_optimizer(lr_schedule="cosine", module_learning_rates={"decoder": 0.05})


def test_a_result_keeps_its_values_when_the_same_autoguide_is_fitted_again():
    from pyro.infer.autoguide import AutoNormal

    guide = AutoNormal(normal_model)
    first = run_svi(normal_model, guide, Y, num_steps=300, learning_rate=0.05, seed=0)
    loc = first.param_state["params"]["AutoNormal.locs.mu"].item()
    run_svi(normal_model, guide, Y + 10.0, num_steps=300, learning_rate=0.05, seed=0)
    assert first.param_state["params"]["AutoNormal.locs.mu"].item() == loc
    assert loc == pytest.approx(exact_normal_posterior(Y)[0], abs=0.1)


def test_minibatch_settings_that_do_not_match_the_model_are_named():
    with pytest.raises(ValueError, match=r"data_size=500 rows .* the model's plates: 'obs' \(400 rows\)"):
        run_svi(normal_model, normal_guide, Y, num_steps=2, data_size=500, batch_size=50)
    with pytest.raises(ValueError, match=r"data_size=100 rows"):
        run_svi(normal_model, normal_guide, Y, num_steps=2, data_size=100, batch_size=50)

    def no_subsample(y):
        normal_model(y)

    def no_subsample_guide(y):
        normal_guide(y)

    with pytest.raises(TypeError, match="batch_size needs a model and guide that accept a subsample keyword"):
        run_svi(no_subsample, no_subsample_guide, Y, num_steps=2, data_size=N, batch_size=50)


def test_non_finite_data_and_parameters_are_named_in_the_error():
    bad = Y.clone()
    bad[7] = float("nan")
    with pytest.raises(
        NonFiniteLossError,
        match=r"the observed data at site 'y' are not finite \(1 of 400 "
        r"entries, e.g. nan\).*keep the values they started with.*"
        r"Check the data",
    ) as info:
        run_svi(normal_model, normal_guide, bad, num_steps=5)
    assert (info.value.site, info.value.origin) == ("y", "data")
    with pytest.raises(
        NonFiniteLossError,
        match=r"the guide's distribution at site 'mu' has parameter\(s\) \['scale'\]"
        r".*smaller learning_rate",
    ) as info:
        run_svi(normal_model, normal_guide, Y, num_steps=20, learning_rate=1e30)
    assert (info.value.site, info.value.origin) == ("mu", "guide")


def test_a_guide_draw_outside_the_model_support_is_blamed_on_the_guide_not_the_data():
    # A Normal guide for a HalfNormal latent: its draws go negative within a few steps, and the model's
    # Normal(0, sigma) then has a negative scale. The data are fine.
    y = torch.linspace(-1.0, 1.0, 50)

    def model(y):
        sigma = pyro.sample("sigma", dist.HalfNormal(y.new_tensor(1.0)))
        with pyro.plate("obs", len(y)):
            pyro.sample("y", dist.Normal(0.0, sigma), obs=y)

    def guide(y):
        pyro.sample("sigma", dist.Normal(pyro.param("sigma_loc", y.new_tensor(0.5)), 0.3))

    with pytest.raises(NonFiniteLossError) as info:
        run_svi(model, guide, y, num_steps=200, seed=0)
    err = info.value
    assert (err.site, err.origin) == ("sigma", "guide")
    assert "the guide's draw at site 'sigma' is outside the support GreaterThanEq" in str(err)
    assert "model's distribution" in str(err) and "data" not in str(err)


def test_resuming_with_another_schedule_is_a_checkpoint_error(tmp_path):
    ckpt = tmp_path / "cosine.ckpt"
    run_svi(normal_model, normal_guide, Y, num_steps=5, lr_schedule="cosine", checkpoint=ckpt)
    with pytest.raises(CheckpointError, match="written with an lr_schedule and this run has none"):
        run_svi(normal_model, normal_guide, Y, num_steps=10, checkpoint=ckpt, resume=True)
    plain = tmp_path / "plain.ckpt"
    run_svi(normal_model, normal_guide, Y, num_steps=5, checkpoint=plain)
    with pytest.raises(CheckpointError, match="written without an lr_schedule and this run has one"):
        run_svi(normal_model, normal_guide, Y, num_steps=10, lr_schedule="cosine", checkpoint=plain, resume=True)


def test_result_params_are_the_constrained_values():
    result = run_svi(normal_model, normal_guide, Y, num_steps=300, learning_rate=0.05, seed=0)
    params = result.params
    assert set(params) == {"loc", "scale"} and isinstance(params["scale"], np.ndarray)
    unconstrained = result.param_state["params"]["scale"].item()
    assert params["scale"] == pytest.approx(math.exp(unconstrained)) and params["scale"] > 0
    assert params["loc"] == pytest.approx(result.param_state["params"]["loc"].item())
    with param_scope(result.param_state):
        assert params["scale"] == pytest.approx(pyro.param("scale").item())


def test_a_plate_that_draws_its_own_minibatch_runs_as_it_is_and_refuses_batch_size():
    # Pyro's own idiom: the plate subsamples itself and scales the batch; the runner adds nothing.
    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        with pyro.plate("obs", len(y), subsample_size=40) as idx:
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y[idx])

    def guide(y):
        normal_guide(y)

    result = run_svi(
        model,
        guide,
        Y,
        num_steps=600,
        learning_rate=0.1,
        lr_schedule="cosine",
        final_lr_factor=0.01,
        average_last=200,
        seed=0,
    )
    mean, sd = exact_normal_posterior(Y)
    # 40 of 400 rows per step: the row sampling moves each step's optimum by several posterior sds, and the
    # average of the last 200 iterates keeps it within one.
    assert result.params["loc"] == pytest.approx(mean, abs=sd)
    again = run_svi(model, guide, Y, num_steps=20, seed=0)  # the plate's draws follow the seed
    np.testing.assert_array_equal(run_svi(model, guide, Y, num_steps=20, seed=0).losses, again.losses)
    with pytest.raises(ValueError, match=r"plate\(s\) \['obs'\] draw their own minibatch .* without batch_size"):
        run_svi(model, guide, Y, num_steps=2, data_size=N, batch_size=40)


def test_a_model_of_pre_sliced_batches_runs_with_batch_args():
    # The EasyGuide tutorial's pattern: the model takes the batch, its index and the full size.
    def model(batch, subsample, full_size):
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        with pyro.plate("obs", full_size, subsample=subsample):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=batch)

    def guide(batch, subsample, full_size):
        normal_guide(batch)

    seen = []

    def batch_args(idx):
        seen.append(idx)
        return Y[idx], idx

    result = run_svi(
        model,
        guide,
        num_steps=600,
        learning_rate=0.1,
        lr_schedule="cosine",
        final_lr_factor=0.01,
        batch_size=40,
        data_size=N,
        batch_args=batch_args,
        full_size=N,
        average_last=200,
        seed=0,
    )
    mean, sd = exact_normal_posterior(Y)
    assert result.params["loc"] == pytest.approx(mean, abs=0.3 * sd)
    assert all(len(idx) == 40 for idx in seen) and sorted(torch.cat(seen[1:11]).tolist()) == list(range(N))
    with pytest.raises(TypeError, match=r"batch_args=lambda idx: \(data\[idx\], idx\)"):
        run_svi(lambda y: normal_model(y), lambda y: normal_guide(y), Y, num_steps=2, data_size=N, batch_size=40)
    with pytest.raises(ValueError, match="batch_args needs batch_size"):
        run_svi(model, guide, num_steps=2, batch_args=batch_args, full_size=N)


def _grouped_fixture():
    """Six parameters in two modules and two loose ones, with gradients from a fixed quadratic."""
    pyro.clear_param_store()
    gen = torch.Generator().manual_seed(0)
    names = ["decoder.w", "decoder.b", "encoder.w", "encoder.b", "loc", "scale"]
    shapes = [(4, 3), (3,), (5, 2), (2,), (7,), ()]
    for name, shape in zip(names, shapes, strict=True):
        pyro.param(name, torch.randn(shape, generator=gen, dtype=torch.float64))
    store = pyro.get_param_store()
    targets = {n: torch.randn(store[n].shape, generator=gen, dtype=torch.float64) for n in names}

    def set_grads(step, only):
        params = set()
        for name in only:
            p = store.get_param(name).unconstrained()
            p.grad = (p.detach() - targets[name]) * (1.0 + 0.1 * step) + 0.01 * step
            params.add(p)
        return params

    return names, store, set_grads


def _run_optimiser(fixture, optim, steps, start=0):
    names, store, set_grads = fixture
    for step in range(start, start + steps):
        # "loc" sits out every third step: a call updates exactly the parameters it is given.
        only = [n for n in names if not (n == "loc" and step % 3 == 0)]
        optim(set_grads(step, only))
        for name in names:
            store.get_param(name).unconstrained().grad = None
    return {n: store[n].detach().clone() for n in names}


def test_grouped_adam_updates_as_pyro_one_optimiser_per_parameter_does_with_one_step_per_setting(monkeypatch):
    from bayesgen.infer import GroupedOptim, make_optimizer

    rates = {"decoder": 0.05}
    reference = make_optimizer(learning_rate=0.01, module_learning_rates=rates)
    # Pyro's own wrapper with the same settings: one torch optimiser per parameter.
    reference = pyro.optim.PyroOptim(reference.pt_optim_constructor, reference.pt_optim_args)
    want = _run_optimiser(_grouped_fixture(), reference, 12)

    fixture = _grouped_fixture()
    grouped = make_optimizer(learning_rate=0.01, module_learning_rates=rates)
    assert isinstance(grouped, GroupedOptim)
    calls = []
    original = torch.optim.Adam.step
    monkeypatch.setattr(
        torch.optim.Adam, "step", lambda self, *a, **k: (calls.append(self), original(self, *a, **k))[1]
    )
    got = _run_optimiser(fixture, grouped, 12)
    for name in want:
        assert torch.equal(got[name], want[name]), name
    # Two settings (the decoder's rate and everyone else's): two optimiser steps per call, not six.
    assert len(calls) == 2 * 12
    assert len({id(o) for o in calls}) == 2
    # "loc" sat out steps 0, 3, 6, 9: its Adam step count says 8, as with its own optimiser.
    state = grouped.get_state()
    assert float(state["loc"]["state"][0]["step"]) == 8.0
    assert float(state["decoder.w"]["state"][0]["step"]) == 12.0
    assert state["decoder.w"]["param_groups"][0]["lr"] == 0.05


def test_grouped_adam_state_is_pyros_format_and_resumes_either_way():
    from bayesgen.infer import make_optimizer

    def both(kind):
        optim = make_optimizer(learning_rate=0.01, module_learning_rates={"decoder": 0.05})
        return optim if kind == "grouped" else pyro.optim.PyroOptim(optim.pt_optim_constructor, optim.pt_optim_args)

    want = _run_optimiser(_grouped_fixture(), both("pyro"), 10)
    for first, second in (("grouped", "pyro"), ("pyro", "grouped"), ("grouped", "grouped")):
        fixture = _grouped_fixture()
        optim = both(first)
        _run_optimiser(fixture, optim, 6)
        saved = optim.get_state()
        later = both(second)
        later.set_state(saved)
        got = _run_optimiser(fixture, later, 4, start=6)
        for name in want:
            assert torch.equal(got[name], want[name]), (first, second, name)
    # A saved learning rate is kept on resume (as torch's load_state_dict keeps it): the decoder's 0.05
    # lands in its own group even when the new run's settings say 0.01 for everything.
    fixture = _grouped_fixture()
    optim = both("grouped")
    _run_optimiser(fixture, optim, 2)
    later = make_optimizer(learning_rate=0.01)
    later.set_state(optim.get_state())
    _run_optimiser(fixture, later, 1, start=2)
    assert later.get_state()["decoder.b"]["param_groups"][0]["lr"] == 0.05
    assert later.get_state()["encoder.b"]["param_groups"][0]["lr"] == 0.01
    assert len({id(o) for o in later.optim_objs.values()}) == 2


def test_pyro_validation_first_checks_the_first_step_only_and_checks_a_failing_step_again():
    seen = []

    def model(y):
        seen.append(is_validation_enabled())
        normal_model(y)

    for setting, expected in [("always", [True] * 7), ("first", [True, True] + [False] * 5)]:
        seen.clear()
        run_svi(model, normal_guide, Y, num_steps=6, seed=0, pyro_validation=setting)
        # one trace to create the parameters, then one model trace per step
        assert seen == expected, setting
        assert is_validation_enabled()  # the caller's setting is back
    with pytest.raises(ValueError, match='pyro_validation must be "always" or "first"'):
        run_svi(model, normal_guide, Y, num_steps=1, pyro_validation="never")

    # A NaN parameter of a Categorical guide: without Pyro's checks torch raises a bare RuntimeError
    # while sampling; the step is traced again with the checks, and the runner names the parameter.
    y = torch.tensor([0, 1, 2, 1])

    def cat_model(y):
        pyro.sample("c", dist.Categorical(torch.ones(3) / 3))
        p = pyro.sample("p", dist.Dirichlet(torch.ones(3)))
        with pyro.plate("obs", len(y)):
            pyro.sample("y", dist.Categorical(p), obs=y)

    def cat_guide(y):
        logits = pyro.param("logits", torch.zeros(3))
        pyro.sample("c", dist.Categorical(logits=logits))
        pyro.sample("p", dist.Dirichlet(logits.exp()))

    def spoil(step, loss):
        if step == 2:
            pyro.get_param_store().get_param("logits").unconstrained().data.fill_(float("nan"))

    messages = {}
    for setting in ("always", "first"):
        with pytest.raises(NonFiniteLossError, match="step 3") as info:
            run_svi(cat_model, cat_guide, y, num_steps=6, callback=spoil, pyro_validation=setting)
        assert "parameter 'logits'" in str(info.value)
        messages[setting] = str(info.value)
    assert messages["always"] == messages["first"]


def test_a_step_traced_again_with_pyro_checks_keeps_extra_state_as_one_step_would():
    # A step that raises only without Pyro's checks is traced again with them; state the model changed during
    # the failed attempt (here a call counter, in a model like batch-norm statistics) is put back first.
    class Counter:
        n = 0

        def state_dict(self):
            return {"n": self.n}

        def load_state_dict(self, state):
            self.n = state["n"]

    counter, failed = Counter(), []

    def model(y):
        counter.n += 1
        if not is_validation_enabled() and not failed:
            failed.append(True)
            raise RuntimeError("only without the checks")
        normal_model(y)

    fit = run_svi(model, normal_guide, Y, num_steps=6, seed=0, extra_state=counter, pyro_validation="first")
    assert failed and len(fit.losses) == 6
    assert counter.n == 7  # the parameters' trace and six steps; the failed attempt left nothing
