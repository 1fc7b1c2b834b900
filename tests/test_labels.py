"""Which class each generated row belongs to: one rule for every generator's ``sample(n, y=...)``.

None draws classes from the class weights, "uniform" balances them exactly in a random order, a label
gives every row that class, a sequence of n labels gives each row its own; unknown labels and sequences
of the wrong length are refused with the same message everywhere.
"""

from __future__ import annotations

import numpy as np
import pytest

from bayesgen._labels import class_index, sample_class_index
from bayesgen.augment import LedoitWolfSampler
from bayesgen.models.gaussian_generator import GaussianGenerator
from bayesgen.models.vae import VAE

WEIGHTS = np.array([0.6, 0.3, 0.1])
CLASSES = np.array(["a", "b", "c"])


def _tolerance(p: np.ndarray, n: int, slack: float = 0.0) -> np.ndarray:
    """Four Monte Carlo standard errors of a class share estimated from n draws, plus ``slack``."""
    return 4 * np.sqrt(p * (1 - p) / n) + slack


# ------------------------------------------------------------------ the helper
def test_none_draws_classes_from_the_weights():
    index = sample_class_index(None, 6000, CLASSES, WEIGHTS * 5, np.random.default_rng(0))  # normalised here
    share = np.bincount(index, minlength=3) / 6000
    assert np.all(np.abs(share - WEIGHTS) < _tolerance(WEIGHTS, 6000))
    never = sample_class_index(None, 500, CLASSES, [0.0, 1.0, 0.0], np.random.default_rng(1))
    assert (never == 1).all()


def test_none_with_one_set_of_weights_per_row():
    n = 6000
    weights = np.empty((n, 3))
    weights[::2] = [1.0, 0.0, 0.0]  # even rows can only be class 0
    weights[1::2] = [0.0, 0.25, 0.75]
    index = sample_class_index(None, n, CLASSES, weights, np.random.default_rng(0))
    assert (index[::2] == 0).all()
    odd = np.bincount(index[1::2], minlength=3) / (n // 2)
    assert odd[0] == 0 and abs(odd[2] - 0.75) < _tolerance(np.array(0.75), n // 2)
    with pytest.raises(ValueError, match=r"shape \(3,\) or \(6000, 3\)"):
        sample_class_index(None, n, CLASSES, weights[:10], np.random.default_rng(0))
    with pytest.raises(ValueError, match="non-negative"):
        sample_class_index(None, 4, CLASSES, [1.0, -1.0, 1.0], np.random.default_rng(0))


@pytest.mark.parametrize(("n", "counts"), [(7, [3, 2, 2]), (9, [3, 3, 3]), (2, [1, 1, 0]), (0, [0, 0, 0])])
def test_uniform_is_exactly_balanced(n, counts):
    index = sample_class_index("uniform", n, CLASSES, WEIGHTS, np.random.default_rng(0))
    assert np.bincount(index, minlength=3).tolist() == counts


def test_uniform_rows_come_in_a_random_order_repeatable_by_seed():
    first = sample_class_index("uniform", 60, CLASSES, WEIGHTS, np.random.default_rng(3))
    again = sample_class_index("uniform", 60, CLASSES, WEIGHTS, np.random.default_rng(3))
    other = sample_class_index("uniform", 60, CLASSES, WEIGHTS, np.random.default_rng(4))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert not np.array_equal(first, np.sort(first)) and not np.array_equal(first, np.arange(60) % 3)


def test_a_label_or_a_sequence_of_labels():
    rng = np.random.default_rng(0)
    assert sample_class_index("b", 4, CLASSES, WEIGHTS, rng).tolist() == [1, 1, 1, 1]
    assert sample_class_index(["c", "a", "c"], 3, CLASSES, WEIGHTS, rng).tolist() == [2, 0, 2]
    assert sample_class_index(np.array(["c", "a"]), 2, CLASSES, WEIGHTS, rng).tolist() == [2, 0]
    assert sample_class_index([], 0, CLASSES, WEIGHTS, rng).tolist() == []
    # a label equals a class by value: 1.0 is the class 1, the string "1" is not
    assert class_index([1.0, np.int64(2)], np.array([1, 2]), 2).tolist() == [0, 1]
    with pytest.raises(ValueError, match=r"unknown labels \['1'\]; the classes are \[1, 2\]"):
        class_index("1", np.array([1, 2]), 3)


def test_bad_labels_are_refused_with_one_message():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"y has unknown labels \['d', 'e'\]; the classes are \['a', 'b', 'c'\]"):
        sample_class_index(["e", "a", "d"], 3, CLASSES, WEIGHTS, rng)
    with pytest.raises(ValueError, match="y has 2 labels for 3 rows"):
        sample_class_index(["a", "b"], 3, CLASSES, WEIGHTS, rng)
    with pytest.raises(ValueError, match="1-D sequence of labels"):
        sample_class_index([["a"], ["b"]], 2, CLASSES, WEIGHTS, rng)
    many = [f"class {i}" for i in range(25)]
    with pytest.raises(ValueError, match=r"'class 19'\] and 5 more"):
        class_index("z", many, 1)


# ----------------------------------------------------------- the three models
def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """1,000 rows in [0, 1] of 3 classes in proportions 0.6 / 0.3 / 0.1, labelled a, b, c."""
    rng = np.random.default_rng(seed)
    y = np.repeat(CLASSES, (600, 300, 100))
    centre = {"a": 0.25, "b": 0.5, "c": 0.75}
    X = np.clip(np.array([centre[v] for v in y])[:, None] + rng.normal(0, 0.05, size=(len(y), 6)), 0, 1)
    return X.astype(np.float32), y


def _fit(name: str):
    X, y = _data()
    if name == "generator-exact":
        return GaussianGenerator(covariance="diag", method="exact", seed=0).fit(X, y)
    if name == "generator-svi":
        return GaussianGenerator(covariance="diag", num_steps=20, seed=0).fit(X, y)
    if name == "vae":
        return VAE(latent_dim=2, hidden_dims=(8,), conditional=True, num_epochs=1, batch_size=500, seed=0).fit(X, y)
    return LedoitWolfSampler(seed=0).fit(X, y)


MODELS = ["generator-exact", "generator-svi", "vae", "ledoit-wolf"]


@pytest.fixture(scope="module", params=MODELS)
def model(request):
    return _fit(request.param)


def test_uniform_is_exactly_balanced_in_every_model(model):
    _, ys = model.sample(301, y="uniform", seed=1)
    counts = [int(np.sum(ys == c)) for c in CLASSES]
    assert counts == [101, 100, 100]
    assert not np.array_equal(ys, np.sort(ys))  # in a random order


def test_a_sequence_of_labels_in_every_model(model):
    wanted = np.array(["c", "a", "b", "c", "c"])
    Xs, ys = model.sample(5, y=wanted, seed=1)
    assert Xs.shape == (5, 6)
    np.testing.assert_array_equal(ys, wanted)
    _, one = model.sample(4, y="b", seed=1)
    assert one.tolist() == ["b"] * 4


def test_bad_labels_give_the_same_error_in_every_model(model):
    with pytest.raises(ValueError, match=r"^y has unknown labels \['z'\]; the classes are \['a', 'b', 'c'\]$"):
        model.sample(3, y="z")
    with pytest.raises(ValueError, match=r"^y has unknown labels \['z'\]; the classes are \['a', 'b', 'c'\]$"):
        model.sample(2, y=["a", "z"])
    with pytest.raises(ValueError, match=r"^y has 2 labels for 3 rows; give one label, or one per row$"):
        model.sample(3, y=["a", "b"])


@pytest.mark.parametrize("name", ["generator-exact", "vae", "ledoit-wolf"])
def test_none_follows_the_class_weights_in_every_model(name):
    model = _fit(name)
    _, ys = model.sample(6000, seed=2)
    share = np.array([np.mean(ys == c) for c in CLASSES])
    # slack 0.005: the generator's posterior predictive weights add its Dirichlet prior to the counts
    assert np.all(np.abs(share - WEIGHTS) < _tolerance(WEIGHTS, 6000, slack=0.005)), share
    _, again = model.sample(6000, seed=2)
    np.testing.assert_array_equal(ys, again)
