"""Exact resume at any interrupt: Ctrl-C delivered at each point of an SVI step, for the runner and every estimator.

Each case fits once straight, once with SIGINT raised at one point of step ``TARGET`` (the first periodic
checkpoint write after it, for the write points), and once resumed from the checkpoint that interrupt
left; the resumed fit must equal the straight one bit for bit (CPU, same seed): losses, parameters and a
prediction. The signal is raised with :func:`signal.raise_signal`, as a terminal's Ctrl-C would be, so the
runner's handling of a real interrupt is what is tested.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd
import pyro
import pyro.optim
import pytest
import torch
from pyro.infer import Trace_ELBO

import bayesgen.infer as infer
from bayesgen.infer import load_checkpoint, param_scope, run_svi
from bayesgen.models.ab_test import BetaBinomialTest
from bayesgen.models.anomaly import MixtureAnomalyDetector
from bayesgen.models.gaussian_generator import GaussianGenerator
from bayesgen.models.topic import ProdLDA
from bayesgen.models.vae import VAE

NUM_STEPS = 20
EVERY = 4  # checkpoints after steps 3, 7, 11, 15, 19
TARGET = 13  # the step interrupted: two steps after the last checkpoint before it, inside the Polyak window

# Points of a step, in order. Each one is where a Ctrl-C can arrive.
RUNNER_POINTS = ["loss", "before_update", "after_update", "checkpoint_write", "after_checkpoint_write"]
AVERAGE_AND_SCHEDULE = ["before_average", "after_average", "before_schedule", "after_schedule"]
HOOK_POINTS = ["before_step", "callback"]


@pytest.fixture(autouse=True)
def _ctrl_c_as_a_terminal_delivers_it() -> Iterator[None]:
    """SIGINT unblocked and handled by Python's default handler (KeyboardInterrupt), as in a fresh
    interpreter, whatever earlier tests in this worker process left; restored afterwards."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT]) if hasattr(signal, "pthread_sigmask") else None
    try:
        yield
    finally:
        if mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        signal.signal(signal.SIGINT, previous)


class Injector:
    """Raises SIGINT once, at ``point`` of step ``TARGET``; counts the optimiser updates to know the step."""

    def __init__(self, point: str, *, sync: bool = False) -> None:
        self.point, self.sync = point, sync
        self.updates = 0  # optimiser updates applied so far: the index of the step in progress
        self.fired = False

    def fire(self, point: str, when: bool = True) -> None:
        if point == self.point and when and not self.fired:
            self.fired = True
            if self.sync:
                raise KeyboardInterrupt  # raised by the code at that point, not by a signal
            signal.raise_signal(signal.SIGINT)

    def wrap(self, fn: Callable, before: str | None, after: str | None, step_done: int) -> Callable:
        """``fn`` with a firing point before and after it, active while ``step_done`` updates are applied."""

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            self.fire(before, self.updates == step_done)
            out = fn(*args, **kwargs)
            self.fire(after, self.updates == step_done)
            return out

        return wrapped

    @contextmanager
    def installed(
        self, monkeypatch: pytest.MonkeyPatch, *, validation: tuple[type, str] | None = None, hook: type | None = None
    ) -> Iterator[Injector]:
        with monkeypatch.context() as mp:

            def counted(optim_call: Callable) -> Callable:
                def update(optim: Any, *args: Any, **kwargs: Any) -> Any:
                    self.fire("before_update", self.updates == TARGET)
                    out = optim_call(optim, *args, **kwargs)
                    self.updates += 1
                    self.fire("after_update", self.updates == TARGET + 1)
                    return out

                return update

            # Pyro's wrapper (schedules, clipped Adam) and bayesgen's grouped Adam (the default) each count.
            for cls in (pyro.optim.PyroOptim, infer.GroupedOptim):
                mp.setattr(cls, "__call__", counted(cls.__dict__["__call__"]))
            mp.setattr(Trace_ELBO, "loss_and_grads", self.wrap(Trace_ELBO.loss_and_grads, None, "loss", TARGET))
            mp.setattr(
                infer,
                "_accumulate_average",
                self.wrap(infer._accumulate_average, "before_average", "after_average", TARGET + 1),
            )
            mp.setattr(
                pyro.optim.PyroLRScheduler,
                "step",
                self.wrap(pyro.optim.PyroLRScheduler.step, "before_schedule", "after_schedule", TARGET + 1),
            )
            save = infer._save_checkpoint

            def write(path: Any, payload: dict) -> Any:
                later = self.updates > TARGET
                self.fire("checkpoint_write", later)
                out = save(path, payload)
                self.fire("after_checkpoint_write", later)
                return out

            mp.setattr(infer, "_save_checkpoint", write)
            if validation is not None:  # the estimator's per-epoch callback validates
                cls, name = validation
                mp.setattr(cls, name, self.wrap(getattr(cls, name), "callback", None, TARGET + 1))
            if hook is not None:  # the estimator's per-step hook
                before = hook._before_step

                def before_step(est: Any, step: int, num_steps: int) -> None:
                    self.fire("before_step", step == TARGET)
                    before(est, step, num_steps)

                mp.setattr(hook, "_before_step", before_step)
            yield self


def assert_same(resumed: dict[str, Any], straight: dict[str, Any]) -> None:
    assert resumed.keys() == straight.keys()
    for key in straight:
        if isinstance(straight[key], pd.DataFrame):
            pd.testing.assert_frame_equal(resumed[key], straight[key], check_exact=True, obj=key)
        else:
            np.testing.assert_array_equal(np.asarray(resumed[key]), np.asarray(straight[key]), err_msg=key)


# ----------------------------------------------------------------------------- run_svi
from normal_models import normal_guide, normal_model  # noqa: E402

N = 64
Y = torch.linspace(-1.0, 5.0, N)


model, guide = normal_model, normal_guide


def runner_fit(*, monkeypatch: pytest.MonkeyPatch | None = None, **opts: Any) -> dict[str, Any]:
    """A minibatch run with a schedule, Polyak averaging, a per-step hook and a callback that keeps a tally."""
    tally = {"hook": 0, "callback": 0}

    def before_step(step: int) -> None:
        tally["hook"] += 1

    def callback(step: int, loss: float) -> None:
        tally["callback"] += 1

    result = run_svi(
        model,
        guide,
        Y,
        num_steps=NUM_STEPS,
        learning_rate=0.1,
        lr_schedule="exponential",
        batch_size=8,
        data_size=N,
        average_last=8,
        seed=3,
        before_step=before_step,
        callback=callback,
        **opts,
    )
    with param_scope(result.param_state):
        params = {name: pyro.param(name).detach().clone() for name in ("loc", "scale")}
    return {"losses": result.losses, **params, "steps": result.num_steps}


@pytest.mark.parametrize("point", [*RUNNER_POINTS, *AVERAGE_AND_SCHEDULE, *HOOK_POINTS])
def test_run_svi_resumes_exactly_after_ctrl_c_at_any_point_of_a_step(tmp_path, monkeypatch, point):
    straight = runner_fit()
    ckpt = tmp_path / "run.ckpt"
    injector = Injector(point)
    with injector.installed(monkeypatch):
        fire = injector.fire

        def before_step(step: int) -> None:
            fire("before_step", step == TARGET)

        def callback(step: int, loss: float) -> None:
            fire("callback", step == TARGET)

        with pytest.raises(KeyboardInterrupt):
            run_svi(
                model,
                guide,
                Y,
                num_steps=NUM_STEPS,
                learning_rate=0.1,
                lr_schedule="exponential",
                batch_size=8,
                data_size=N,
                average_last=8,
                seed=3,
                before_step=before_step,
                callback=callback,
                checkpoint=ckpt,
                checkpoint_every=EVERY,
            )
    assert injector.fired
    resumed = runner_fit(checkpoint=ckpt, resume=True)
    assert_same(resumed, straight)


def test_an_error_raised_inside_the_update_leaves_the_last_checkpoint(tmp_path, monkeypatch, caplog):
    """An exception from the update's own code (not Ctrl-C, which waits) leaves the step partly applied:
    that state is not written, and the checkpoint from before it still resumes exactly."""
    straight = runner_fit()
    ckpt = tmp_path / "run.ckpt"
    injector = Injector("after_update", sync=True)
    with injector.installed(monkeypatch), pytest.raises(KeyboardInterrupt):
        runner_fit(checkpoint=ckpt, checkpoint_every=EVERY)
    assert injector.fired
    assert load_checkpoint(ckpt)["step"] == 12  # written after step 11
    assert "partly applied" in caplog.text
    assert_same(runner_fit(checkpoint=ckpt, resume=True), straight)


def test_ctrl_c_during_the_update_takes_effect_once_the_update_is_complete(tmp_path, monkeypatch):
    ckpt = tmp_path / "run.ckpt"
    with Injector("after_update").installed(monkeypatch), pytest.raises(KeyboardInterrupt):
        runner_fit(checkpoint=ckpt, checkpoint_every=EVERY)
    saved = load_checkpoint(ckpt)
    assert saved["step"] == TARGET + 1 and len(saved["average"]) == 2  # the step, its average and all
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is back


def test_ctrl_c_during_the_final_checkpoint_write_still_leaves_one(tmp_path, monkeypatch):
    straight = runner_fit()
    ckpt = tmp_path / "run.ckpt"
    save, fired = infer._save_checkpoint, []

    def ctrl_c_once(path: Any, payload: dict) -> Any:
        if not fired:
            fired.append(payload["step"])
            signal.raise_signal(signal.SIGINT)
        return save(path, payload)

    with monkeypatch.context() as mp, pytest.raises(KeyboardInterrupt):
        mp.setattr(infer, "_save_checkpoint", ctrl_c_once)
        runner_fit(checkpoint=ckpt)  # no checkpoint_every: the final write is the only one
    assert fired == [NUM_STEPS] and ckpt.exists()
    assert_same(runner_fit(checkpoint=ckpt, resume=True), straight)


# ----------------------------------------------------------------------------- estimators
def _ab() -> tuple[Callable, Callable, Callable]:
    def make() -> BetaBinomialTest:
        return BetaBinomialTest(num_steps=NUM_STEPS, num_particles=2, average_last=8, seed=0)

    def fit(est: BetaBinomialTest, **kw: Any) -> BetaBinomialTest:
        return est.fit([30, 45, 38], [100, 100, 100], **kw)

    return make, fit, lambda est: {"prob_best": est.prob_best(exact=False).to_numpy()}


def _anomaly() -> tuple[Callable, Callable, Callable]:
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(size=(60, 3)), rng.normal(6.0, 1.0, size=(4, 3))])

    def make() -> MixtureAnomalyDetector:
        return MixtureAnomalyDetector(
            num_components=2, covariance="diag", num_steps=NUM_STEPS, average_last=8, num_samples=10, seed=0
        )

    return make, lambda est, **kw: est.fit(X, **kw), lambda est: {"proba": est.predict_proba(X)}


def _generator() -> tuple[Callable, Callable, Callable]:
    rng = np.random.default_rng(1)
    X = np.vstack([rng.normal(size=(30, 4)), rng.normal(1.5, 1.0, size=(30, 4))])
    y = np.repeat([0, 1], 30)

    def make() -> GaussianGenerator:
        return GaussianGenerator(
            covariance="diag",
            num_steps=NUM_STEPS,
            batch_size=20,
            average_last=8,
            convergence_rtol=None,
            num_samples=5,
            seed=0,
        )

    return make, lambda est, **kw: est.fit(X, y, **kw), lambda est: {"proba": est.predict_proba(X, seed=0)}


def _vae() -> tuple[Callable, Callable, Callable]:
    X = (np.random.default_rng(2).random((48, 16)) < 0.4).astype(np.float32)

    def make() -> VAE:  # 36 training rows in batches of 16: 2 steps an epoch, validated at its end
        return VAE(
            latent_dim=2,
            hidden_dims=(8,),
            batch_size=16,
            num_epochs=NUM_STEPS // 2,
            validation_fraction=0.25,
            learning_rate=0.01,
            seed=0,
        )

    def predict(est: VAE) -> dict[str, Any]:
        return {
            "encode": est.encode(X)[0],
            "history": est.history_.drop(columns="seconds"),
            "best_epoch": est.best_epoch_,
        }

    return make, lambda est, **kw: est.fit(X, **kw), predict


def _prodlda() -> tuple[Callable, Callable, Callable]:
    X = np.random.default_rng(3).poisson(1.0, size=(50, 30))
    vocabulary = [f"w{i}" for i in range(30)]

    def make() -> ProdLDA:  # 40 training documents in batches of 20: 2 steps an epoch
        return ProdLDA(
            num_topics=3,
            hidden_dim=8,
            batch_size=20,
            num_epochs=NUM_STEPS // 2,
            validation_fraction=0.2,
            patience=None,
            min_df=1,
            max_df=1.0,
            stop_words=None,
            seed=0,
        )

    def predict(est: ProdLDA) -> dict[str, Any]:
        return {
            "transform": est.transform(X, vocabulary).mean,
            "history": est.history_.drop(columns="seconds"),
            "best_epoch": est.best_epoch_,
        }

    return make, lambda est, **kw: est.fit(X, vocabulary, **kw), predict


ESTIMATORS: dict[str, tuple[Callable, dict[str, Any], list[str]]] = {
    "ab_test": (_ab, {}, RUNNER_POINTS + AVERAGE_AND_SCHEDULE),
    "anomaly": (_anomaly, {}, RUNNER_POINTS + AVERAGE_AND_SCHEDULE),
    "generator": (_generator, {}, RUNNER_POINTS + AVERAGE_AND_SCHEDULE),
    "vae": (_vae, {"validation": (VAE, "_mean_elbo"), "hook": VAE}, RUNNER_POINTS + HOOK_POINTS),
    "prodlda": (_prodlda, {"validation": (ProdLDA, "_elbo_rows"), "hook": ProdLDA}, RUNNER_POINTS + HOOK_POINTS),
}
CASES = [(name, point) for name, (_, _, points) in ESTIMATORS.items() for point in points]


def _fitted(est: Any, predict: Callable) -> dict[str, Any]:
    return {"losses": est.losses_, **{f"param:{k}": v for k, v in est.params_.items()}, **predict(est)}


@pytest.mark.filterwarnings("ignore:the SVI posterior is off the exact:UserWarning")  # 20 steps are few
@pytest.mark.parametrize(("name", "point"), CASES, ids=[f"{n}-{p}" for n, p in CASES])
def test_estimator_resumes_exactly_after_ctrl_c_at_any_point_of_a_step(tmp_path, monkeypatch, name, point):
    build, where, _ = ESTIMATORS[name]
    make, fit, predict = build()
    straight = _fitted(fit(make()), predict)
    assert len(straight["losses"]) == NUM_STEPS
    ckpt = tmp_path / "fit.ckpt"
    injector = Injector(point)
    with injector.installed(monkeypatch, **where), pytest.raises(KeyboardInterrupt):
        fit(make(), checkpoint=ckpt, checkpoint_every=EVERY)
    assert injector.fired
    resumed = fit(make(), checkpoint=ckpt, checkpoint_every=EVERY, resume=True)
    assert_same(_fitted(resumed, predict), straight)


@pytest.mark.parametrize("net", ["vae", "prodlda"])
def test_a_fit_that_early_stopping_ended_resumes_as_ended(tmp_path, monkeypatch, net):
    """Ctrl-C after the epoch whose validation ended the fit (during that step's checkpoint write): the
    checkpoint records the stop, so resuming does not train on."""
    make, fit, predict = {"vae": _vae, "prodlda": _prodlda}[net]()

    def patient() -> Any:
        est = make()
        est.patience, est.num_epochs = 1, 40
        return est

    straight = fit(patient())
    assert len(straight.history_) < 40  # early stopping ended it
    ckpt = tmp_path / "fit.ckpt"
    save = infer._save_checkpoint
    fired = []

    def ctrl_c_during_the_last_write(path: Any, payload: dict) -> Any:
        if not fired and payload["step"] == len(straight.losses_):
            fired.append(payload["step"])
            signal.raise_signal(signal.SIGINT)
        return save(path, payload)

    with monkeypatch.context() as mp, pytest.raises(KeyboardInterrupt):
        mp.setattr(infer, "_save_checkpoint", ctrl_c_during_the_last_write)
        fit(patient(), checkpoint=ckpt, checkpoint_every=2)  # 2 steps an epoch: a write at every epoch's end
    assert fired
    resumed = fit(patient(), checkpoint=ckpt, resume=True)
    assert_same(_fitted(resumed, predict), _fitted(straight, predict))
