"""torch's CPU thread count: chosen per fit (num_threads), the user's own setting kept, the caller's restored."""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions import constraints

from bayesgen import _runtime, infer
from bayesgen._runtime import SMALL_STEP_ELEMENTS, choose_threads, thread_count
from bayesgen.infer import SVIRunner, run_svi
from bayesgen.models import ab_test
from bayesgen.models.ab_test import BetaBinomialTest


@pytest.fixture
def torch_default(monkeypatch):
    """A process with no OMP_NUM_THREADS on 6 logical CPUs of 3 physical cores, whose thread count (6) is one
    torch may pick itself and the one bayesgen found."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(6)
    monkeypatch.setattr(_runtime, "_threads_at_import", 6)
    monkeypatch.setattr(_runtime, "usable_cores", lambda: 6)
    monkeypatch.setattr(_runtime.os, "cpu_count", lambda: 6)
    monkeypatch.setattr(_runtime, "_physical_cores", lambda: 3)
    monkeypatch.setattr(_runtime, "idle_share", lambda seconds=0.1: 1.0)  # nothing else running
    yield
    torch.set_num_threads(before)


def test_auto_uses_one_thread_for_a_small_step_and_the_physical_cores_for_a_large_one(torch_default):
    assert choose_threads("auto", step_elements=SMALL_STEP_ELEMENTS - 1) == 1
    assert choose_threads("auto", step_elements=SMALL_STEP_ELEMENTS * 10) == 3
    assert choose_threads("auto") == 3  # work unknown
    with thread_count(1):  # bayesgen's own setting in an enclosing block is not the user's
        assert choose_threads("auto", step_elements=SMALL_STEP_ELEMENTS * 10) == 3


@pytest.mark.parametrize(("share", "threads"), [(1.0, 3), (0.9, 3), (0.6, 2), (0.3, 1), (0.0, 1), (None, 3)])
def test_auto_leaves_the_cores_other_processes_keep_busy(torch_default, monkeypatch, share, threads):
    """A large step runs on the physical cores times the idle share of the CPUs (None: unknown, all of them)."""
    monkeypatch.setattr(_runtime, "idle_share", lambda seconds=0.1: share)
    assert choose_threads("auto", step_elements=SMALL_STEP_ELEMENTS * 10) == threads
    assert choose_threads("auto", step_elements=SMALL_STEP_ELEMENTS - 1) == 1
    assert choose_threads(3, step_elements=SMALL_STEP_ELEMENTS * 10) == 3  # a count given is used as given


def test_idle_share_reads_the_usable_cpus_ticks(monkeypatch):
    """Idle (idle + iowait) ticks over all ticks of the usable CPUs between two readings of /proc/stat."""
    readings = iter([{0: (100, 200), 1: (50, 400)}, {0: (110, 210), 1: (50, 410), 2: (999, 999)}])
    monkeypatch.setattr(_runtime, "_cpu_times", lambda: next(readings))
    monkeypatch.setattr(_runtime.time, "sleep", lambda seconds: None)
    assert _runtime.idle_share(0.0) == pytest.approx(0.5)  # CPU 0 idle 10 of 10 ticks, CPU 1 busy 10 of 10
    monkeypatch.setattr(_runtime, "_cpu_times", lambda: None)
    assert _runtime.idle_share(0.0) is None


def test_cpu_times_parses_proc_stat(monkeypatch, tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  10 0 10 100 5 0 0 0 0 0\ncpu0 1 2 3 40 5 6 7 8 9 10\ncpu1 1 1 1 1 1 1 1 1 0 0\nintr 12345\n")
    real_open = open
    monkeypatch.setattr(_runtime.os, "sched_getaffinity", lambda pid: {0})
    monkeypatch.setattr(
        "builtins.open", lambda path, *a, **k: real_open(stat if path == "/proc/stat" else path, *a, **k)
    )
    # CPU 1 is not usable; guest ticks (the last two) are already counted in user and nice.
    assert _runtime._cpu_times() == {0: (45, 1 + 2 + 3 + 40 + 5 + 6 + 7 + 8)}


def test_auto_keeps_the_users_setting(torch_default, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert choose_threads("auto", step_elements=1) is None
    monkeypatch.delenv("OMP_NUM_THREADS")
    torch.set_num_threads(5)  # after bayesgen loaded, to a count torch would not pick itself
    assert choose_threads("auto", step_elements=1) is None
    monkeypatch.setattr(_runtime, "_threads_at_import", 5)  # before bayesgen loaded
    assert choose_threads("auto", step_elements=1) is None


def test_explicit_counts_and_none(torch_default):
    assert choose_threads(3, step_elements=1) == 3
    assert choose_threads(None, step_elements=1) is None
    for bad in (0, -1, 1.5, "many", True):
        with pytest.raises(ValueError, match="num_threads"):
            choose_threads(bad)


def test_thread_count_restores_the_callers_count_even_on_error(torch_default):
    with thread_count(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 6
    with pytest.raises(RuntimeError, match="boom"), thread_count(1):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == 6


def _model(y, subsample=None):
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    with pyro.plate("obs", len(y), subsample=subsample) as idx:
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y[idx])
    _model.seen.append(torch.get_num_threads())


def _guide(y, subsample=None):
    loc = pyro.param("loc", torch.tensor(0.0))
    scale = pyro.param("scale", torch.tensor(1.0), constraint=constraints.positive)
    pyro.sample("mu", dist.Normal(loc, scale))


def _fit(y, **kwargs):
    _model.seen = []
    return run_svi(_model, _guide, y, num_steps=30, learning_rate=0.05, seed=0, **kwargs)


def test_a_fit_runs_on_the_chosen_count_and_gives_it_back(torch_default):
    small = torch.linspace(-1, 1, 100)
    _fit(small)
    assert set(_model.seen) == {1} and torch.get_num_threads() == 6
    large = torch.linspace(-1, 1, 2 * SMALL_STEP_ELEMENTS)
    _fit(large)
    assert set(_model.seen) == {3} and torch.get_num_threads() == 6
    # a minibatch step reads its share of the rows; tensors inside lists and dicts count
    runner = SVIRunner(_model, _guide, data_size=len(large), batch_size=100, seed=0).init(large)
    assert runner.step_elements == pytest.approx(100)
    _fit(large, num_threads=2)
    assert set(_model.seen) == {2} and torch.get_num_threads() == 6
    _fit(small, num_threads=None)
    assert set(_model.seen) == {6}


def test_a_step_whose_size_the_arguments_do_not_show_counts_as_large(torch_default):
    data = torch.linspace(-1, 1, 2 * SMALL_STEP_ELEMENTS)

    def from_scope(subsample=None):  # the model reads its data from the enclosing scope
        _model(data, subsample)

    def guide_from_scope(subsample=None):
        _guide(data, subsample)

    _model.seen = []
    run_svi(from_scope, guide_from_scope, num_steps=3, seed=0)
    assert set(_model.seen) == {3}
    sliced = SVIRunner(
        lambda y, idx: _model(data, idx),
        lambda y, idx: _guide(data, idx),
        data_size=len(data),
        batch_size=8,
        batch_args=lambda idx: (data[idx], idx),
        seed=0,
    ).init()
    assert sliced.step_elements is None
    nested = SVIRunner(_model, _guide, seed=0)
    nested.args, nested.kwargs, nested.batch_args = ([data[:10]],), {"extra": {"x": data}}, None
    assert nested._step_elements() == 10 + len(data)


def test_results_agree_across_thread_counts_to_rounding_and_bitwise_at_one_count(torch_default):
    y = torch.randn(3 * SMALL_STEP_ELEMENTS, generator=torch.Generator().manual_seed(0)) + 0.5
    one, two, two_again = (_fit(y, num_threads=n).losses for n in (1, 2, 2))
    np.testing.assert_array_equal(two, two_again)
    np.testing.assert_allclose(one, two, rtol=1e-5)


def test_estimators_take_num_threads(torch_default, monkeypatch):
    seen = []
    real = infer._loss_and_grads

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(infer, "_loss_and_grads", spy)
    with pytest.warns(UserWarning, match="off the exact"):  # 20 steps: far from converged
        fitted = BetaBinomialTest(num_steps=20, average_last=0, num_threads=np.int64(2)).fit([30, 40], [100, 100])
    assert seen and set(seen) == {2}
    assert torch.get_num_threads() == 6
    # a count applies to the estimator's other methods too
    inside = []
    monkeypatch.setattr(ab_test, "to_numpy", lambda v: inside.append(torch.get_num_threads()) or v.numpy())
    fitted.posterior(10)
    assert inside == [2] and torch.get_num_threads() == 6
    with pytest.raises(ValueError, match="num_threads"):
        BetaBinomialTest(num_threads="fast").fit([30, 40], [100, 100])


def test_the_command_line_gives_openmp_a_short_spin_unless_the_user_chose_one():
    import subprocess
    import sys

    from bayesgen.cli import OMP_SPIN_COUNT, _short_omp_spin

    probe = (
        "import sys; from bayesgen.cli import _short_omp_spin;"
        "env = dict(a.split('=') for a in sys.argv[1:]); _short_omp_spin(env);"
        "print(env.get('GOMP_SPINCOUNT'), 'torch' in sys.modules)"
    )

    def run(*settings):
        command = [sys.executable, "-c", probe, *settings]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout

    assert run().split() == [OMP_SPIN_COUNT, "False"]  # before torch loads
    assert run("GOMP_SPINCOUNT=50").split() == ["50", "False"]
    assert run("OMP_WAIT_POLICY=ACTIVE").split() == ["None", "False"]
    env: dict[str, str] = {}
    _short_omp_spin(env)  # torch is loaded in this process: OpenMP has read its settings already
    assert env == {}


def test_a_run_from_before_num_threads_reproduces_with_it_under_inference(tmp_path):
    from bayesgen.runs.reproduce import _fill_settings_added_since

    BetaBinomialTest(method="exact").fit([30, 40], [100, 100]).save(tmp_path / "model")
    spec = {"model": {"prior": [1.0, 1.0]}, "inference": {"method": "exact"}}
    _fill_settings_added_since(spec, tmp_path / "model")
    assert spec["inference"]["num_threads"] == "auto" and "num_threads" not in spec["model"]
    assert spec["model"]["ci_prob"] == 0.94  # a model setting the old spec lacked goes under [model]
