"""VAE: model/guide structure, training on real digits, bounds, conditional sampling, errors."""

from __future__ import annotations

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from bayesgen.augment import augment
from bayesgen.datasets import load_digits
from bayesgen.models.vae import VAE, MLPDecoder, MLPEncoder, guide, iwae_bound, model


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits()  # 1797 x 64, scaled to [0, 1]
    return X.astype(np.float32), y


@pytest.fixture(scope="module")
def fitted(digits):
    X, _ = digits
    return VAE(latent_dim=8, hidden_dims=(128,), num_epochs=30, batch_size=64, seed=0).fit(X[:1500])


@pytest.fixture(scope="module")
def cvae(digits):
    X, y = digits
    return VAE(latent_dim=8, hidden_dims=(128,), conditional=True, num_epochs=30, batch_size=64, seed=0).fit(X, y)


@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous_bernoulli", "gaussian"])
def test_model_and_guide_share_latent_sites_and_log_prob_is_finite(likelihood):
    x = torch.rand(20, 64)
    enc, dec = MLPEncoder(64, 3, [16], 0), MLPDecoder(64, 3, [16], 0)
    from bayesgen.models.vae import _GaussianScale

    scale = _GaussianScale(64) if likelihood == "gaussian" else None
    g = poutine.trace(guide).get_trace(x, encoder=enc)
    m = poutine.trace(poutine.replay(model, trace=g)).get_trace(
        x, decoder=dec, likelihood=likelihood, latent_dim=3, gaussian_scale=scale
    )

    def latent(tr):
        return {
            n
            for n, s in tr.nodes.items()
            if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)
        }

    assert latent(m) == latent(g) == {"z"}
    assert m.nodes["z"]["value"].shape == (20, 3)
    assert torch.isfinite(m.log_prob_sum()) and torch.isfinite(g.log_prob_sum())
    # Without data the same model generates (prior predictive).
    prior = poutine.trace(model).get_trace(
        None, decoder=dec, likelihood=likelihood, latent_dim=3, num_rows=5, gaussian_scale=scale
    )
    assert prior.nodes["x"]["value"].shape == (5, 64)


def test_iwae_bound_with_k1_is_the_elbo_and_grows_with_k():
    torch.manual_seed(0)
    x = (torch.rand(50, 64) > 0.5).float()
    enc, dec = MLPEncoder(64, 2, [16]), MLPDecoder(64, 2, [16])
    with torch.no_grad():
        torch.manual_seed(1)
        k1 = torch.stack([iwae_bound(x, None, encoder=enc, decoder=dec, likelihood="bernoulli") for _ in range(200)])
        # ELBO = E_q[log p(x|z)] - KL(q || p), with the KL in closed form.
        loc, scale = enc(x)
        z = torch.distributions.Normal(loc, scale).sample((4000,))
        rec = torch.distributions.Bernoulli(logits=dec(z)).log_prob(x).sum(-1).mean(0)
        kl = torch.distributions.kl_divergence(
            torch.distributions.Normal(loc, scale), torch.distributions.Normal(0, 1)
        ).sum(-1)
        k100 = iwae_bound(x, None, encoder=enc, decoder=dec, likelihood="bernoulli", num_samples=100)
    se = k1.std(0) / np.sqrt(200)
    assert torch.all((k1.mean(0) - (rec - kl)).abs() < 5 * se + 0.05)
    assert float((k100 - k1.mean(0)).mean()) > 0


def test_training_on_digits_loss_falls_and_reconstructions_beat_the_mean_image(fitted, digits):
    X, _ = digits
    losses = fitted.losses_
    assert np.mean(losses[-50:]) < 0.8 * np.mean(losses[:20])
    held_out = X[1500:]
    rec = fitted.reconstruct(held_out)
    mse_vae = np.mean((rec - held_out) ** 2)
    mse_mean = np.mean((X[:1500].mean(axis=0) - held_out) ** 2)
    assert mse_vae < 0.75 * mse_mean
    assert rec.shape == held_out.shape and rec.min() >= 0 and rec.max() <= 1
    assert list(fitted.history_["epoch"]) == list(range(1, 31))


def test_iwae_estimate_is_at_least_the_elbo(fitted, digits):
    X, _ = digits
    rows = X[1500:1700]
    elbo = fitted.elbo(rows, num_samples=50, seed=0)
    iwae = fitted.log_likelihood(rows, num_samples=200, seed=0)
    assert iwae.shape == elbo.shape == (200,)
    # Per-row MC error of the 50-draw ELBO average is far below the gap.
    assert iwae.mean() > elbo.mean()
    assert np.mean(iwae >= elbo - 0.5) > 0.95
    # And the held-out ELBO is not far below the training ELBO (no collapse, no blow-up).
    assert fitted.history_["train_elbo"].iloc[-1] - elbo.mean() < 10


def test_same_seed_same_result_on_cpu(digits):
    X, _ = digits
    a = VAE(latent_dim=4, hidden_dims=(32,), num_epochs=2, batch_size=64, seed=3, device="cpu").fit(X[:400])
    b = VAE(latent_dim=4, hidden_dims=(32,), num_epochs=2, batch_size=64, seed=3, device="cpu").fit(X[:400])
    c = VAE(latent_dim=4, hidden_dims=(32,), num_epochs=2, batch_size=64, seed=4, device="cpu").fit(X[:400])
    np.testing.assert_array_equal(a.losses_, b.losses_)
    np.testing.assert_array_equal(a.encode(X[:10])[0], b.encode(X[:10])[0])
    np.testing.assert_array_equal(a.sample(5, seed=1)[0], b.sample(5, seed=1)[0])
    assert not np.array_equal(a.losses_, c.losses_)


def test_conditional_samples_are_the_requested_class(cvae, digits):
    from sklearn.linear_model import LogisticRegression

    X, y = digits
    clf = LogisticRegression(max_iter=2000).fit(X, y)
    for k in range(10):
        xs, ys = cvae.sample(40, y=k, seed=k)
        assert xs.shape == (40, 64) and set(ys.tolist()) == {k}
        assert np.mean(clf.predict(xs) == k) >= 0.8, k
    # Without y, classes come in the training proportions.
    _, ys = cvae.sample(2000, seed=0)
    freq = np.bincount(ys, minlength=10) / 2000
    assert np.all(np.abs(freq - np.bincount(y) / len(y)) < 0.035)


def test_conditional_vae_feeds_augmentation(cvae, digits):
    X, y = digits
    data = augment(X[:100], y[:100], cvae, num_per_class=5, seed=0)
    assert data.X.shape == (150, 64) and data.synthetic.sum() == 50
    assert np.array_equal(data.X[:100], X[:100])
    assert sorted(np.bincount(data.y[data.synthetic])) == [5] * 10


def test_unconditional_vae_cannot_make_a_class(fitted, digits):
    X, y = digits
    with pytest.raises(ValueError, match="not conditional"):
        fitted.sample(3, y=2)
    with pytest.raises(ValueError, match="not conditional"):
        augment(X[:50], y[:50], fitted, num_per_class=2)


def test_conv_architecture_and_other_likelihoods_train(digits):
    X, _ = digits
    conv = VAE(architecture="conv", latent_dim=4, hidden_dims=(64,), num_epochs=4, batch_size=64, seed=0).fit(X[:600])
    assert conv.image_shape_ == (8, 8)
    assert np.mean(conv.losses_[-10:]) < np.mean(conv.losses_[:5])
    for lik in ("continuous_bernoulli", "gaussian"):
        v = VAE(latent_dim=4, hidden_dims=(32,), likelihood=lik, num_epochs=4, batch_size=64, seed=0).fit(X[:600])
        assert np.isfinite(v.losses_).all() and np.mean(v.losses_[-10:]) < np.mean(v.losses_[:5])
        assert np.isfinite(v.log_likelihood(X[:20], num_samples=20)).all()
    # Images given as (n, h, w) work the same as flat rows.
    img = VAE(latent_dim=4, hidden_dims=(32,), num_epochs=1, batch_size=64, seed=0).fit(X[:200].reshape(-1, 8, 8))
    assert img.image_shape_ == (8, 8) and img.reconstruct(X[:3]).shape == (3, 64)


def test_jit_and_amp_give_the_same_kind_of_fit(digits):
    X, _ = digits
    plain = VAE(latent_dim=4, hidden_dims=(32,), num_epochs=3, batch_size=64, seed=0).fit(X[:640])
    jit = VAE(latent_dim=4, hidden_dims=(32,), num_epochs=3, batch_size=64, seed=0, jit=True).fit(X[:640])
    # Compiling consumes random numbers, so the streams differ; the fits agree in distribution.
    assert abs(np.mean(jit.losses_[-10:]) - np.mean(plain.losses_[-10:])) < 0.03 * abs(np.mean(plain.losses_[-10:]))
    assert np.mean(jit.losses_[-10:]) < np.mean(jit.losses_[:5])
    amp = VAE(latent_dim=4, hidden_dims=(32,), num_epochs=3, batch_size=64, seed=0, amp=True).fit(X[:640])
    assert np.isfinite(amp.losses_).all()
    assert abs(np.mean(amp.losses_[-10:]) - np.mean(plain.losses_[-10:])) < 0.05 * abs(np.mean(plain.losses_[-10:]))


def test_early_stopping_keeps_the_best_epoch(digits):
    X, _ = digits
    # 150 rows and a big network overfit quickly, so the validation ELBO turns.
    v = VAE(
        latent_dim=16,
        hidden_dims=(256,),
        num_epochs=200,
        batch_size=30,
        learning_rate=3e-3,
        validation_fraction=0.2,
        patience=3,
        seed=0,
    ).fit(X[:150])
    hist = v.history_
    assert len(hist) < 200, "validation ELBO never stopped improving"
    best = int(hist["epoch"][hist["val_elbo"].idxmax()])
    assert v.best_epoch_ == best and len(hist) - best == 3
    assert "val_elbo" in hist and np.isfinite(hist["val_elbo"]).all()


def test_checkpoint_resume_equals_an_unbroken_fit(digits, tmp_path):
    X, _ = digits
    settings = dict(latent_dim=4, hidden_dims=(32,), batch_size=64, seed=0)
    whole = VAE(num_epochs=4, **settings).fit(X[:640])
    VAE(num_epochs=2, **settings).fit(X[:640], checkpoint=tmp_path / "ck.pt")
    resumed = VAE(num_epochs=4, **settings).fit(X[:640], checkpoint=tmp_path / "ck.pt", resume=True)
    np.testing.assert_allclose(resumed.losses_, whole.losses_, rtol=1e-5)
    np.testing.assert_allclose(resumed.encode(X[:5])[0], whole.encode(X[:5])[0], rtol=1e-4, atol=1e-5)


def test_interpolate_decode_and_plots(fitted, digits):
    X, y = digits
    path = fitted.interpolate(X[0], X[1], steps=6)
    assert path.shape == (6, 64)
    np.testing.assert_allclose(path[0], fitted.reconstruct(X[:1])[0], atol=1e-5)
    np.testing.assert_allclose(path[-1], fitted.reconstruct(X[1:2])[0], atol=1e-5)
    for fig in (
        fitted.plot_samples(4),
        fitted.plot_reconstructions(X[:6]),
        fitted.plot_latent(X[:300], y[:300]),
        fitted.plot_interpolation(X[0], X[1]),
    ):
        assert fig.axes


def test_to_arviz_holds_latents_and_loss_history(fitted):
    tree = fitted.to_arviz(50, rows=[0, 5, 9])
    assert tree.posterior["z"].dims == ("chain", "draw", "row", "latent")
    assert tree.posterior.sizes["row"] == 3 and tree.posterior.sizes["latent"] == 8
    assert tree.log_likelihood["x"].shape == (2, 25, 3)
    assert len(tree["loss_history"]["loss"]) == len(fitted.losses_)
    assert "train_elbo" in tree["loss_history"]
    # The guide's draws center on the encoder's posterior mean.
    loc, scale = fitted.encode(fitted._x[[0, 5, 9]].cpu().numpy())
    z = tree.posterior["z"].values.reshape(50, 3, 8)
    assert np.all(np.abs(z.mean(0) - loc) < 4 * scale / np.sqrt(50) + 1e-3)


@pytest.mark.parametrize(
    ("make_x", "kwargs", "match", "err"),
    [
        (lambda X: X * 16, {}, r"\[0, 1\]", ValueError),
        (lambda X: np.where(np.arange(64) == 3, np.nan, X), {}, "NaN", ValueError),
        (lambda X: X.astype(str), {}, "numeric", TypeError),
        (lambda X: X[:, :60], {"architecture": "conv"}, "not square", ValueError),
        (lambda X: X.reshape(-1, 2, 32), {"architecture": "conv", "image_shape": None}, "multiples of 4", ValueError),
        (lambda X: X, {"image_shape": (7, 7)}, "49 pixels", ValueError),
        (lambda X: X, {"likelihood": "poisson"}, "likelihood", ValueError),
        (lambda X: X, {"hidden_dims": ()}, "hidden_dims", ValueError),
    ],
)
def test_bad_input_is_rejected_clearly(digits, make_x, kwargs, match, err):
    X, _ = digits
    Xb = make_x(X[:192].copy())
    with pytest.raises(err, match=match):
        VAE(num_epochs=1, **kwargs).fit(Xb)


def test_bad_calls_after_fit_are_clear(fitted, cvae, digits):
    X, y = digits
    with pytest.raises(ValueError, match="64"):
        fitted.reconstruct(np.zeros((2, 49)))
    with pytest.raises(ValueError, match="conditional"):
        cvae.encode(X[:3])
    with pytest.raises(ValueError, match="unknown labels"):
        cvae.sample(3, y=11)
    with pytest.raises(ValueError, match="conditional=True"):
        VAE(num_epochs=1).fit(X[:100], y[:100])
    with pytest.raises(ValueError, match="labels"):
        VAE(conditional=True, num_epochs=1).fit(X[:100])
    with pytest.raises(ValueError, match="patience"):
        VAE(num_epochs=1, patience=2).fit(X[:100])


def test_save_load_keeps_the_networks(fitted, digits, tmp_path):
    X, _ = digits
    fitted.save(tmp_path / "vae")
    loaded = VAE.load(tmp_path / "vae", device=fitted.device_)  # same device: the same numbers and draws
    np.testing.assert_allclose(loaded.reconstruct(X[:5]), fitted.reconstruct(X[:5]), rtol=1e-6)
    np.testing.assert_array_equal(loaded.sample(4, seed=2)[0], fitted.sample(4, seed=2)[0])
    # On the CPU (a GPU fit on a machine without one): the same networks, up to the devices' rounding.
    on_cpu = VAE.load(tmp_path / "vae", device="cpu")
    np.testing.assert_allclose(on_cpu.reconstruct(X[:5]), fitted.reconstruct(X[:5]), rtol=1e-4, atol=1e-6)
    assert list(pyro.get_param_store().keys()) == []


@pytest.mark.cuda
def test_fit_on_cuda_with_data_resident_on_the_gpu(digits):
    X, y = digits
    v = VAE(
        latent_dim=4, hidden_dims=(64,), conditional=True, num_epochs=3, batch_size=64, device="cuda", seed=0, amp=True
    ).fit(X, y)
    assert v._x.device.type == "cuda" and next(v.decoder_.parameters()).device.type == "cuda"
    assert np.isfinite(v.losses_).all()
    xs, _ = v.sample(10, y=3, seed=0)
    assert xs.shape == (10, 64) and isinstance(xs, np.ndarray)


def test_loaded_conditional_vae_draws_classes_in_the_training_proportions(cvae, tmp_path):
    # The saved model keeps only a few rows; the class proportions must come from all of them.
    cvae.save(tmp_path / "cvae")
    loaded = VAE.load(tmp_path / "cvae", device="cpu")
    np.testing.assert_array_equal(loaded.class_counts_, cvae.class_counts_)
    assert loaded.class_counts_.sum() == len(cvae._x)
    np.testing.assert_array_equal(loaded.sample(300, seed=5)[1], cvae.sample(300, seed=5)[1])


def test_more_bad_input_is_clear():
    from bayesgen.models._base import NotFittedError

    X = np.random.default_rng(0).uniform(size=(64, 16))
    with pytest.raises(NotFittedError):
        VAE().plot_reconstructions(X)
    with pytest.raises(ValueError, match="image_shape must be two positive integers"):
        VAE(image_shape=(-4, -4), num_epochs=1).fit(X)
    vae = VAE(num_epochs=1, batch_size=32, latent_dim=2, hidden_dims=[8], seed=0).fit(X[:48], X_val=X[48:])
    assert "val_elbo" in vae.history_.columns
    with pytest.raises(ValueError, match="Z has NaN or infinite values"):
        vae.decode(np.full((2, 2), np.nan))
    with pytest.raises(ValueError, match="num_samples must be an integer >= 1"):
        vae.posterior(-1)
    with pytest.raises(ValueError, match="num_samples must be an integer >= 1"):
        vae.elbo(X, num_samples=0)
    with pytest.raises(ValueError, match="holds 2 x 8 images; this model was fitted to 4 x 4"):
        vae.encode(X.reshape(64, 2, 8))
    assert vae.encode(X.reshape(64, 4, 4))[0].shape == (64, 2)
    with pytest.raises(ValueError, match=r"rows must be positions in 0..47"):
        vae.to_arviz(5, rows=[1000])
    with pytest.raises(ValueError, match="labels must have one entry per row"):
        vae.plot_latent(X, labels=[1, 2])
    with pytest.raises(ValueError, match="same size"):
        vae.interpolate(X[0], X[0, :8])
    assert vae.to_arviz(5, rows=range(3)).posterior.sizes["row"] == 3


def test_settings_and_validation_labels_are_checked():
    X, y = np.random.default_rng(0).uniform(size=(40, 16)), np.repeat([0, 1], 20)
    with pytest.raises(ValueError, match="not conditional"):
        VAE(num_epochs=1, batch_size=20).fit(X[:30], X_val=X[30:], y_val=y[30:])
    with pytest.raises(ValueError, match="hidden_dims must be a non-empty sequence"):
        VAE(hidden_dims=8).fit(X)
    with pytest.raises(ValueError, match="patience must be an integer >= 1"):
        VAE(patience=1.5, validation_fraction=0.2).fit(X)


def test_conditional_labels_with_gaps_or_mixed_types_are_clear():
    X = np.random.default_rng(0).uniform(size=(40, 16))
    with pytest.raises(ValueError, match="1 missing labels"):
        VAE(conditional=True, num_epochs=1, batch_size=20).fit(X, [None] + [0, 1] * 19 + [1])
    with pytest.raises(TypeError, match="mixes label types"):
        VAE(conditional=True, num_epochs=1, batch_size=20).fit(X, ["a"] + [0, 1] * 19 + [1])


def _drawn(fig):
    """The figure laid out and drawn off-screen, so text extents are known."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    return fig.canvas.get_renderer()


@pytest.fixture(scope="module")
def tiny_cvae(digits):
    X, y = digits
    return VAE(latent_dim=4, hidden_dims=(32,), conditional=True, num_epochs=2, seed=0).fit(X[:400], y[:400])


def test_reconstruction_labels_sit_left_of_their_own_row(tiny_cvae, digits):
    X, y = digits
    fig = tiny_cvae.plot_reconstructions(X[400:408], y[400:408])
    renderer = _drawn(fig)
    rows = [fig.axes[0], fig.axes[8]]  # the first image of each row
    for ax, label in zip(rows, ("original", "reconstructed"), strict=True):
        assert ax.get_ylabel() == label
        text, box = ax.yaxis.label.get_window_extent(renderer), ax.get_window_extent(renderer)
        assert text.x1 <= box.x0  # ends left of the row's first image, never over it
        assert box.y0 <= (text.y0 + text.y1) / 2 <= box.y1  # beside its own row


def test_interpolation_shows_the_real_endpoints(tiny_cvae, digits):
    X, y = digits
    fig = tiny_cvae.plot_interpolation(X[400], X[401], 6, y=y[400])
    titles = [ax.get_title() for ax in fig.axes]
    assert len(fig.axes) == 6 + 2 and titles[0] == "real x1" and titles[-1] == "real x2"
    assert titles[1] == "t=0" and titles[-2] == "t=1"
    np.testing.assert_allclose(np.asarray(fig.axes[0].images[0].get_array()).ravel(), X[400])
    np.testing.assert_allclose(np.asarray(fig.axes[-1].images[0].get_array()).ravel(), X[401])
    decoded = tiny_cvae.interpolate(X[400], X[401], 6, y=y[400])
    np.testing.assert_allclose(np.asarray(fig.axes[1].images[0].get_array()).ravel(), decoded[0], rtol=1e-6)


def test_conditional_latent_plot_says_why_the_classes_mix(tiny_cvae, digits):
    X, y = digits
    plain_vae = VAE(latent_dim=4, hidden_dims=(32,), num_epochs=2, seed=0).fit(X[:400])
    texts = " ".join(
        t.get_text()
        for t in tiny_cvae.plot_latent(X[:200], y[:200], y=y[:200]).findobj(lambda o: hasattr(o, "get_text"))
    )
    assert "decoder is given the label" in texts
    plain = " ".join(
        t.get_text() for t in plain_vae.plot_latent(X[:200], y[:200]).findobj(lambda o: hasattr(o, "get_text"))
    )
    assert "decoder is given the label" not in plain  # an unconditional VAE's latent code does carry the class


@pytest.mark.parametrize("true_dims", [1, 2])
def test_latent_activity_finds_as_many_active_dimensions_as_the_data_were_made_with(true_dims):
    # Binary images drawn from a known low-dimensional latent: a VAE with 5 latent dimensions should use as many
    # as the data have and leave the rest at the prior, and the active ones should carry the true latent.
    rng = np.random.default_rng(true_dims)
    n, d = 3000, 64
    z = rng.normal(size=(n, true_dims))
    w = rng.normal(scale=3.0, size=(true_dims, d))
    b = rng.normal(scale=0.5, size=d)
    X = (rng.random((n, d)) < 1 / (1 + np.exp(-(z @ w + b)))).astype(np.float32)
    vae = VAE(latent_dim=5, hidden_dims=(64,), num_epochs=30, batch_size=128, learning_rate=3e-3, seed=0)
    vae.fit(X[:2500])
    table = vae.latent_activity(X[2500:])
    assert list(table.index) == [f"z[{k}]" for k in range(5)]
    assert table.attrs["active"] == true_dims == int(table["active"].sum())
    assert (table.loc[~table["active"], "kl"] < 0.05).all()  # collapsed dimensions cost next to nothing
    loc, scale = vae.encode(X[2500:])
    # The active means explain the true latent (least squares; R^2 of each true coordinate).
    design = np.column_stack([loc[:, table["active"].to_numpy()], np.ones(len(loc))])
    for k in range(true_dims):
        coef, *_ = np.linalg.lstsq(design, z[2500:, k], rcond=None)
        resid = z[2500:, k] - design @ coef
        assert 1 - resid.var() / z[2500:, k].var() > 0.8
    # The KL column against a Monte Carlo estimate from the guide's own Normal: E_q[log q(z|x) - log p(z)].
    q = torch.distributions.Normal(
        torch.as_tensor(loc, dtype=torch.float64), torch.as_tensor(scale, dtype=torch.float64)
    )
    draws = q.sample((4000,))
    prior = torch.distributions.Normal(0.0, 1.0)
    mc = (q.log_prob(draws) - prior.log_prob(draws)).mean(dim=(0, 1)).numpy()
    np.testing.assert_allclose(table["kl"].to_numpy(), mc, atol=0.01, rtol=0.02)
    assert table["activity"].to_numpy() == pytest.approx(loc.var(axis=0, ddof=1), rel=1e-5)
    with pytest.raises(ValueError, match="threshold"):
        vae.latent_activity(X[2500:], threshold=0.0)
    with pytest.raises(ValueError, match="at least 2 rows"):
        vae.latent_activity(X[:1])
