"""ArviZ bridge: a user's own model/guide pair and bayesgen's, checked against ground truth."""

from __future__ import annotations

import math

import arviz_stats
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import config_enumerate
from pyro.infer.autoguide import AutoNormal
from scipy import stats
from torch.distributions import constraints

from bayesgen.arviz import summary, to_datatree
from bayesgen.infer import run_svi

Y = torch.tensor([1.2, 0.4, 0.9, 1.6, 2.1, 0.7])
GROUPS = 3


def flat(var):
    """All draws of a variable, shape (n_draws, *dims): the chains the draws are split into, joined."""
    values = var.values
    return values.reshape(-1, *values.shape[2:])


def user_model(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    with pyro.plate("group", GROUPS):
        offset = pyro.sample("offset", dist.Normal(0.0, 1.0))
    pyro.deterministic("mu_plus_offsets", mu + offset)
    with pyro.plate("obs", y.shape[0]):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def user_guide(y):
    loc = pyro.param("mu_loc", torch.tensor(0.0))
    scale = pyro.param("mu_scale", torch.tensor(1.0), constraint=constraints.positive)
    pyro.sample("mu", dist.Normal(loc, scale))
    with pyro.plate("group", GROUPS):
        pyro.sample("offset", dist.Normal(torch.zeros(GROUPS), torch.ones(GROUPS)))


def exact_mu():
    precision = 1 / 25 + len(Y)
    return float(Y.sum()) / precision, math.sqrt(1 / precision)


def set_exact_guide():
    mean, sd = exact_mu()
    state = {"params": {}, "constraints": {}}
    from bayesgen.infer import param_scope

    with param_scope(state):
        pyro.param("mu_loc", torch.tensor(mean))
        pyro.param("mu_scale", torch.tensor(sd), constraint=constraints.positive)
    return state


def test_groups_dims_coords_and_values_for_a_user_model():
    state = set_exact_guide()
    tree = to_datatree(
        user_model,
        user_guide,
        Y,
        num_samples=4000,
        param_state=state,
        seed=1,
        dims={"offset": ["group"], "mu_plus_offsets": ["group"], "y": ["obs"]},
        coords={"group": ["a", "b", "c"]},
        prior=True,
    )
    assert set(tree.children) == {
        "posterior",
        "posterior_predictive",
        "log_likelihood",
        "observed_data",
        "prior",
        "prior_predictive",
    }
    post = tree.posterior
    assert dict(post["mu"].sizes) == {"chain": 4, "draw": 1000}
    assert dict(post["offset"].sizes) == {"chain": 4, "draw": 1000, "group": 3}
    assert list(post["group"].values) == ["a", "b", "c"]
    np.testing.assert_allclose(
        post["mu_plus_offsets"].values, post["mu"].values[..., None] + post["offset"].values, rtol=1e-5
    )
    mean, sd = exact_mu()
    se = sd / math.sqrt(4000)
    assert abs(float(post["mu"].mean()) - mean) < 4 * se
    assert float(post["mu"].std()) == pytest.approx(sd, rel=0.05)
    np.testing.assert_array_equal(tree.observed_data["y"].values, Y.numpy())
    # the log-likelihood is the model's per-observation log density at each draw
    mu = flat(post["mu"])
    expected = stats.norm.logpdf(Y.numpy()[None, :], loc=mu[:, None], scale=1.0)
    np.testing.assert_allclose(flat(tree.log_likelihood["y"]), expected, rtol=1e-4, atol=1e-4)
    # posterior predictive: y_rep ~ Normal(mu, 1) so var = sd^2 + 1
    y_rep = tree.posterior_predictive["y"].values
    assert y_rep.shape == (4, 1000, len(Y))
    assert float(y_rep.var()) == pytest.approx(sd**2 + 1, rel=0.1)
    # prior draws come from the prior, not the guide
    assert float(tree.prior["mu"].std()) == pytest.approx(5.0, rel=0.1)
    assert tree.attrs["inference_method"] == "svi"


def test_loo_runs_on_the_bridge_log_likelihood():
    tree = to_datatree(user_model, user_guide, Y, num_samples=2000, param_state=set_exact_guide(), dims={"y": ["obs"]})
    result = arviz_stats.loo(tree)
    assert np.isfinite(result.elpd) and result.n_data_points == len(Y)
    # elpd_loo is below the in-sample log predictive density
    lppd = np.log(np.exp(flat(tree.log_likelihood["y"])).mean(axis=0)).sum()
    assert result.elpd < lppd


def test_autoguide_fitted_with_the_runner_converts():
    guide = AutoNormal(user_model)
    fit = run_svi(
        user_model, guide, Y, num_steps=1500, learning_rate=0.05, lr_schedule="cosine", final_lr_factor=0.01, seed=0
    )
    tree = to_datatree(
        user_model, guide, Y, param_state=fit.param_state, num_samples=2000, dims={"y": ["obs"], "offset": ["group"]}
    )
    mean, sd = exact_mu()
    assert float(tree.posterior["mu"].mean()) == pytest.approx(mean, abs=0.2 * sd)
    assert float(tree.posterior["mu"].std()) == pytest.approx(sd, rel=0.2)
    assert tree.posterior["offset"].sizes["group"] == GROUPS


def test_global_param_store_pair_like_a_plain_pyro_script():
    mean, sd = exact_mu()
    pyro.param("mu_loc", torch.tensor(mean))
    pyro.param("mu_scale", torch.tensor(sd), constraint=constraints.positive)
    tree = to_datatree(user_model, user_guide, Y, num_samples=500)
    assert float(tree.posterior["mu"].mean()) == pytest.approx(mean, abs=4 * sd / math.sqrt(500))


def test_non_vectorisable_model_falls_back_to_a_loop():
    def scalar_model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        # .item() breaks under a vectorising plate: the bridge must fall back
        shift = float(mu.item())
        with pyro.plate("obs", y.shape[0]):
            pyro.sample("y", dist.Normal(shift, 1.0), obs=y)

    def scalar_guide(y):
        pyro.sample("mu", dist.Normal(pyro.param("mu_loc", torch.tensor(1.0)), 0.3))

    tree = to_datatree(scalar_model, scalar_guide, Y, num_samples=50, seed=0)
    assert tree.posterior["mu"].shape == (2, 25)
    assert tree.log_likelihood["y"].shape == (2, 25, len(Y))


def test_same_seed_same_draws_and_callers_rng_untouched():
    state = set_exact_guide()
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    a = to_datatree(user_model, user_guide, Y, num_samples=100, param_state=state, seed=3)
    np.testing.assert_array_equal(torch.rand(3), expected)
    b = to_datatree(user_model, user_guide, Y, num_samples=100, param_state=state, seed=3)
    np.testing.assert_array_equal(a.posterior["mu"].values, b.posterior["mu"].values)


def test_summary_reports_statistics_and_exact_mcse_for_guide_draws():
    tree = to_datatree(
        user_model, user_guide, Y, num_samples=1000, param_state=set_exact_guide(), dims={"offset": ["group"]}
    )
    table = summary(tree, var_names=["mu", "offset"])
    assert "r_hat" not in table.columns and "ess_bulk" not in table.columns
    assert {"mean", "sd", "eti94_lb", "eti94_ub", "mcse_mean", "n_draws"} <= set(table.columns)
    assert table.loc["mu", "n_draws"] == 1000
    assert table.loc["mu", "mcse_mean"] == pytest.approx(table.loc["mu", "sd"] / math.sqrt(1000))
    assert list(table.index) == ["mu", "offset[0]", "offset[1]", "offset[2]"]


def test_bad_dims_name_the_variable():
    with pytest.raises(ValueError, match="dims\\['mu'\\]"):
        to_datatree(
            user_model, user_guide, Y, num_samples=10, param_state=set_exact_guide(), dims={"mu": ["too", "many"]}
        )
    with pytest.raises(ValueError, match=r"dims names \['yy'\], which are not sites of the model"):
        to_datatree(
            user_model,
            user_guide,
            Y,
            num_samples=10,
            param_state=set_exact_guide(),
            dims={"yy": ["obs"]},
            unknown_dims="raise",
        )
    # By default an entry for a site that this variant of the model lacks is ignored.
    tree = to_datatree(
        user_model, user_guide, Y, num_samples=10, param_state=set_exact_guide(), dims={"yy": ["rows"], "y": ["rows"]}
    )
    assert tree.log_likelihood["y"].dims == ("chain", "draw", "rows")


def test_a_guide_whose_parameters_are_not_in_the_state_is_reported(caplog):
    with caplog.at_level("WARNING", logger="bayesgen.arviz"):
        to_datatree(user_model, user_guide, Y, num_samples=10, param_state={"params": {}, "constraints": {}})
    assert "the guide created parameters ['mu_loc', 'mu_scale']" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="bayesgen.arviz"):
        to_datatree(user_model, user_guide, Y, num_samples=10, param_state=set_exact_guide())
    assert "created parameters" not in caplog.text


def test_coords_of_the_wrong_length_name_the_dimension():
    for labels, match in (
        (["a", "b"], "coords\\['group'\\] has 2 labels.*'offset'.*size 3"),
        ("abc", "sequence of labels"),
    ):
        with pytest.raises(ValueError, match=match):
            to_datatree(
                user_model,
                user_guide,
                Y,
                num_samples=10,
                param_state=set_exact_guide(),
                dims={"offset": ["group"]},
                coords={"group": labels},
            )


def test_deterministic_sites_do_not_distort_predictive_shapes():
    # pyro.deterministic upstream of the observation used to be re-sampled by
    # uncondition, giving y_rep an extra dimension and breaking ArviZ's PPC plots.
    def model_with_det(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        with pyro.plate("obs", y.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            theta = pyro.deterministic("theta", mu + z)
            pyro.sample("y", dist.Normal(theta, 1.0), obs=y)

    guide = AutoNormal(model_with_det)
    fit = run_svi(model_with_det, guide, Y, num_steps=20, seed=0)
    for parallel in (True, False):
        tree = to_datatree(
            model_with_det,
            guide,
            Y,
            param_state=fit.param_state,
            num_samples=30,
            parallel=parallel,
            dims={"y": ["obs"], "z": ["obs"], "theta": ["obs"]},
            prior=True,
        )
        assert tree.posterior_predictive["y"].dims == ("chain", "draw", "obs")
        assert tree.prior_predictive["y"].dims == ("chain", "draw", "obs")
        np.testing.assert_allclose(
            tree.posterior["theta"].values,
            tree.posterior["mu"].values[..., None] + tree.posterior["z"].values,
            rtol=1e-5,
        )


def test_summary_and_converter_arguments_are_checked():
    tree = to_datatree(user_model, user_guide, Y, num_samples=50, param_state=set_exact_guide())
    with pytest.raises(ValueError, match=r"var_names \['nope'\] are not in the posterior group"):
        summary(tree, var_names=["nope"])
    with pytest.raises(ValueError, match="no group 'nope'"):
        summary(tree, group="nope")
    with pytest.raises(ValueError, match="ci_prob must be a number in"):
        summary(tree, ci_prob=2)
    with pytest.raises(TypeError, match="must be an ArviZ DataTree"):
        summary({})
    assert list(summary(tree, var_names=["~offset", "~mu_plus_offsets"]).index) == ["mu"]
    with pytest.raises(ValueError, match="num_samples must be an integer >= 1"):
        to_datatree(user_model, user_guide, Y, num_samples=0, param_state=set_exact_guide())
    with pytest.raises(TypeError, match=r"param_state must be a param-store state.*dict \['foo'\]"):
        to_datatree(user_model, user_guide, Y, num_samples=5, param_state={"foo": 1})
    bad = Y.clone()
    bad[2] = float("nan")
    with pytest.raises(
        ValueError,
        match=r"cannot be evaluated on these data: a value at site 'y' is outside "
        r"its distribution's support Real\(\)",
    ) as caught:
        to_datatree(user_model, user_guide, bad, num_samples=5, param_state=set_exact_guide())
    assert "tensor(" not in str(caught.value)  # no tensor dump


def test_a_model_that_reduces_over_a_plate_is_drawn_one_at_a_time(caplog):
    # theta - theta.mean() spans the draws too in a vectorised pass; the bridge must notice and loop.
    def centred_model(y):
        with pyro.plate("group", GROUPS):
            theta = pyro.sample("theta", dist.Normal(0.0, 1.0))
            centred = pyro.deterministic("centred", theta - theta.mean())
            pyro.sample("y", dist.Normal(centred, 1.0), obs=y[:GROUPS])

    def centred_guide(y):
        with pyro.plate("group", GROUPS):
            pyro.sample("theta", dist.Normal(torch.zeros(GROUPS), torch.ones(GROUPS)))

    with caplog.at_level("WARNING", logger="bayesgen.arviz"):
        tree = to_datatree(centred_model, centred_guide, Y, num_samples=40, seed=0)
    assert "disagree with a plain pass" in caplog.text
    sums = tree.posterior["centred"].sum(dim="group").values
    np.testing.assert_allclose(sums, 0.0, atol=1e-5)
    theta = flat(tree.posterior["theta"])
    expected = stats.norm(theta - theta.mean(-1, keepdims=True), 1.0).logpdf(Y.numpy()[None, :GROUPS])
    np.testing.assert_allclose(flat(tree.log_likelihood["y"]), expected, rtol=1e-4, atol=1e-4)


def test_subsampling_plates_are_refused():
    def subsampled(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        with pyro.plate("obs", y.shape[0], subsample_size=3) as idx:
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y[idx])

    with pytest.raises(ValueError, match="plate 'obs' subsamples 3 of its 6 rows"):
        to_datatree(subsampled, None, Y, num_samples=5)


# Pyro's Gaussian-mixture pattern: config_enumerate on the model, the guide blocks the assignment z.
MIX_Y = torch.cat(
    [
        torch.randn(30, generator=torch.Generator().manual_seed(0)) - 2.5,
        torch.randn(20, generator=torch.Generator().manual_seed(1)) * 0.7 + 2.0,
    ]
)


def _mixture(y):
    w = pyro.sample("w", dist.Dirichlet(torch.ones(2)))
    mu = pyro.sample("mu", dist.Normal(torch.tensor([-1.0, 1.0]), 5.0).to_event(1))
    sd = pyro.sample("sd", dist.LogNormal(torch.zeros(2), 1.0).to_event(1))
    with pyro.plate("obs", y.shape[0]):
        z = pyro.sample("z", dist.Categorical(w))
        pyro.sample("y", dist.Normal(mu[z], sd[z]), obs=y)


gaussian_mixture = config_enumerate(_mixture)


def mixture_log_joint(w, mu, sd, y):
    """Ground truth by hand: log p(y_i | θ) per draw and row = logsumexp_k log w_k N(y_i; mu_k, sd_k),
    and the log prior (the Dirichlet(1, 1) density is 1 on the simplex)."""
    from scipy.special import logsumexp

    joint = np.log(w)[:, None, :] + stats.norm(mu[:, None, :], sd[:, None, :]).logpdf(y[None, :, None])
    prior = stats.norm([-1.0, 1.0], 5.0).logpdf(mu).sum(1) + stats.lognorm(1.0).logpdf(sd).sum(1)
    return joint, logsumexp(joint, axis=-1), prior


@pytest.fixture(scope="module")
def fitted_mixture():
    from pyro.infer.autoguide import init_to_value

    # Started apart (the symmetric start can settle on one broad component; that is the fit's business).
    guide = AutoNormal(
        poutine.block(gaussian_mixture, hide=["z"]), init_loc_fn=init_to_value(values={"mu": torch.tensor([-2.0, 2.0])})
    )
    fit = run_svi(
        gaussian_mixture,
        guide,
        MIX_Y,
        num_steps=120,
        learning_rate=0.05,
        loss="trace_enum",
        max_plate_nesting=1,
        seed=0,
    )
    return guide, fit.param_state


def test_vi_khat_sums_enumerated_sites_out_of_the_importance_ratios(fitted_mixture):
    from bayesgen.diagnostics import vi_khat
    from bayesgen.infer import param_scope

    guide, state = fitted_mixture
    diag = vi_khat(gaussian_mixture, guide, MIX_Y, num_samples=150, param_state=state)
    d = diag.draws
    _, marginal, prior = mixture_log_joint(d["w"], d["mu"], d["sd"], MIX_Y.numpy())
    # log q(θ) of each stored draw, from the guide conditioned on it.
    with param_scope(state), torch.no_grad():
        log_q = np.array(
            [
                poutine.trace(poutine.condition(guide, data={k: torch.as_tensor(v[i]) for k, v in d.items()}))
                .get_trace(MIX_Y)
                .log_prob_sum()
                .item()
                for i in range(150)
            ]
        )
    np.testing.assert_allclose(diag.raw_log_weights, prior + marginal.sum(1) - log_q, atol=1e-3)
    assert diag.verdict in ("good", "usable")
    # Model-side sequential enumeration is summed out by nobody (TraceEnum_ELBO neither): refused by name.
    with pytest.raises(ValueError, match="sites \\['z'\\] are enumerated sequentially"):
        vi_khat(config_enumerate(_mixture, default="sequential"), guide, MIX_Y, num_samples=150, param_state=state)


def test_enumerated_sites_are_summed_out_of_the_log_likelihood_and_drawn_from_their_posterior(fitted_mixture):
    guide, state = fitted_mixture
    y = MIX_Y
    tree = to_datatree(
        gaussian_mixture, guide, y, param_state=state, num_samples=250, dims={"y": ["obs"], "z": ["obs"]}
    )
    post = tree.posterior
    w, mu, sd = (flat(post[k]) for k in ("w", "mu", "sd"))
    joint, marginal, _ = mixture_log_joint(w, mu, sd, y.numpy())  # from the stored parameter draws
    np.testing.assert_allclose(flat(tree.log_likelihood["y"]), marginal, rtol=1e-5, atol=1e-5)
    # z is drawn from p(z | y, θ): over the draws, P(z_i = 1) matches the mean responsibility (binomial sd
    # at most 0.5 / sqrt(250) = 0.032 per row; 0.12 is 3.8 sd).
    resp = np.exp(joint[..., 1] - marginal).mean(0)
    z = flat(post["z"])
    assert z.shape == (250, 50) and set(np.unique(z)) <= {0, 1}
    assert np.abs(z.mean(0) - resp).max() < 0.12
    assert z[:, :30].mean() < 0.05 and z[:, 30:].mean() > 0.95  # the two planted groups
    # The replicated data mix both components (z from p(z | θ)), and LOO runs on the marginal likelihood.
    rep = flat(tree.posterior_predictive["y"])
    assert 0.3 < (rep > 0).mean() < 0.5
    assert np.isfinite(arviz_stats.loo(tree).elpd)

    # Cases without a per-row marginal likelihood are refused by name. The bridge sums out parallel
    # enumeration only; a sequential site would otherwise come from its prior.
    with pytest.raises(ValueError, match="sites \\['z'\\] are enumerated sequentially"):
        to_datatree(config_enumerate(_mixture, default="sequential"), guide, y, num_samples=3)

    @config_enumerate
    def shared_component(y):
        mu = pyro.sample("mu", dist.Normal(torch.zeros(2), 5.0).to_event(1))
        z = pyro.sample("z", dist.Categorical(torch.ones(2) / 2))  # one z for every row
        with pyro.plate("obs", y.shape[0]):
            pyro.sample("y", dist.Normal(mu[z], 1.0), obs=y)

    with pytest.raises(ValueError, match="enumerated site 'z' is outside plate\\(s\\) \\['obs'\\]"):
        to_datatree(shared_component, AutoNormal(poutine.block(shared_component, hide=["z"])), y, num_samples=3)

    @config_enumerate
    def two_views(y):
        mu = pyro.sample("mu", dist.Normal(torch.zeros(2), 5.0).to_event(1))
        with pyro.plate("obs", y.shape[0]):
            z = pyro.sample("z", dist.Categorical(torch.ones(2) / 2))
            pyro.sample("a", dist.Normal(mu[z], 1.0), obs=y)
            pyro.sample("b", dist.Normal(mu[z], 2.0), obs=y)

    with pytest.raises(ValueError, match="observed sites \\['a', 'b'\\] depend on the same enumerated sites"):
        to_datatree(two_views, AutoNormal(poutine.block(two_views, hide=["z"])), y, num_samples=3)

    def not_broadcasting(y):
        mu = pyro.sample("mu", dist.Normal(torch.zeros(2), 5.0).to_event(1))
        with pyro.plate("obs", y.shape[0]):
            z = pyro.sample("z", dist.Categorical(torch.ones(2) / 2), infer={"enumerate": "parallel"})
            pyro.sample("y", dist.Normal(torch.stack([mu[int(k)] for k in z.reshape(-1)[: len(y)]]), 1.0), obs=y)

    with pytest.raises(ValueError, match="summing out the enumerated sites \\['z'\\] failed"):
        to_datatree(not_broadcasting, AutoNormal(poutine.block(not_broadcasting, hide=["z"])), y, num_samples=3)


def test_a_point_estimate_guide_and_an_unplated_observation_are_warned_about(caplog):
    from pyro.infer.autoguide import AutoDelta

    def plated(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        with pyro.plate("obs", len(y)):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    def unplated(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        pyro.sample("y", dist.Normal(mu, 1.0).expand([len(y)]).to_event(1), obs=y)

    guide = AutoDelta(plated)
    fit = run_svi(plated, guide, Y, num_steps=50, learning_rate=0.05, seed=0)
    with caplog.at_level("WARNING", logger="bayesgen.arviz"):
        tree = to_datatree(plated, guide, Y, param_state=fit.param_state, num_samples=20)
    assert "the guide is a point mass" in caplog.text
    assert "arviz_stats.loo and compare cannot use it" in caplog.text
    assert tree.posterior["mu"].shape == (1, 1) and tree.log_likelihood["y"].shape == (1, 1, len(Y))
    assert tree.attrs["point_estimate"] == 1
    with pytest.raises((ValueError, IndexError)):  # what the warning says: PSIS-LOO refuses a tree without spread
        arviz_stats.loo(tree)
    caplog.clear()
    guide = AutoNormal(unplated)
    fit = run_svi(unplated, guide, Y, num_steps=50, learning_rate=0.05, seed=0)
    with caplog.at_level("WARNING", logger="bayesgen.arviz"):
        tree = to_datatree(unplated, guide, Y, param_state=fit.param_state, num_samples=20)
    assert "observed site 'y' gives one log-likelihood for all its 6 values" in caplog.text
    assert tree.log_likelihood["y"].shape == (4, 5)
    caplog.clear()
    guide = AutoNormal(plated)
    fit = run_svi(plated, guide, Y, num_steps=50, learning_rate=0.05, seed=0)
    with caplog.at_level("WARNING", logger="bayesgen.arviz"):  # neither, for a plated model and a spread guide
        to_datatree(plated, guide, Y, param_state=fit.param_state, num_samples=20)
    assert "point-estimate" not in caplog.text and "one log-likelihood" not in caplog.text
    assert "is masked" not in caplog.text
    caplog.clear()

    def masked(y):  # the last two observations left out of the likelihood
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        with pyro.plate("obs", len(y)), poutine.mask(mask=torch.arange(len(y)) < len(y) - 2):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    with caplog.at_level("WARNING", logger="bayesgen.arviz"):
        tree = to_datatree(masked, guide, Y, param_state=fit.param_state, num_samples=20)
    assert "observed site 'y' is masked (poutine.mask): 2 of its 6 values are not in the likelihood" in caplog.text
    np.testing.assert_array_equal(tree.log_likelihood["y"].values[..., -2:], 0.0)  # what the warning is about
    assert (tree.log_likelihood["y"].values[..., :-2] != 0).all()


def test_draw_guide_vectorises_and_falls_back_to_a_loop_for_guides_that_do_not_broadcast():
    """Every latent site as (num_samples, *site_shape), with the guide's own moments, both ways."""
    import pyro.distributions as dist

    from bayesgen.arviz import draw_guide

    def guide(x):
        pyro.sample("mu", dist.Normal(torch.tensor([1.0, -2.0]), 0.5).to_event(1))
        with pyro.plate("k", 3):
            pyro.sample("s", dist.LogNormal(0.0, 0.1))

    def stubborn(x):  # reshapes a draw to a fixed shape: cannot broadcast over a draws plate
        mu = pyro.sample("mu", dist.Normal(torch.tensor([1.0, -2.0]), 0.5).to_event(1))
        mu.reshape(2)
        with pyro.plate("k", 3):
            pyro.sample("s", dist.LogNormal(0.0, 0.1))

    pyro.set_rng_seed(0)
    for fn in (guide, stubborn):
        draws = draw_guide(fn, torch.zeros(4), num_samples=4000)
        assert draws["mu"].shape == (4000, 2) and draws["s"].shape == (4000, 3)
        np.testing.assert_allclose(draws["mu"].mean(0).numpy(), [1.0, -2.0], atol=0.03)
        np.testing.assert_allclose(draws["mu"].std(0).numpy(), [0.5, 0.5], rtol=0.05)
        assert "k" not in draws


# A logistic regression whose outer rows are predicted with logits beyond ±100: there a float32
# log-density rounds to exactly 0 in every draw.
LOGIT_X = torch.linspace(-30.0, 30.0, 21)
LOGIT_Y = (LOGIT_X > 0).float()
LOGIT_Y[[9, 11]] = 1 - LOGIT_Y[[9, 11]]  # two surprises near the boundary


def logistic(x, y=None):
    a = pyro.sample("a", dist.Normal(0.0, 5.0))
    b = pyro.sample("b", dist.Normal(0.0, 10.0))
    with pyro.plate("row", x.shape[0]):
        eta = pyro.deterministic("eta", a + b * x)
        return pyro.sample("y", dist.Bernoulli(logits=eta), obs=y)


def logistic_guide(x, y=None):
    pyro.sample("a", dist.Normal(0.0, 0.3))
    pyro.sample("b", dist.Normal(5.0, 0.5))


def test_log_likelihood_is_float64_so_loo_works_on_confidently_predicted_rows():
    tree = to_datatree(logistic, logistic_guide, LOGIT_X, LOGIT_Y, num_samples=800, seed=0)
    ll = tree.log_likelihood["y"]
    assert ll.dtype == np.float64
    # By hand in float64 from the stored draws: log p(y | eta) = y eta - log(1 + e^eta).
    a, b = flat(tree.posterior["a"]).astype(np.float64), flat(tree.posterior["b"]).astype(np.float64)
    eta = a[:, None] + b[:, None] * LOGIT_X.double().numpy()[None, :]
    sign = 1 - 2 * LOGIT_Y.double().numpy()[None, :]
    by_hand = -np.logaddexp(0.0, sign * eta)  # log sigmoid(eta) for y = 1, log sigmoid(-eta) for y = 0
    assert (by_hand[:, [0, -1]] < 0).all() and (by_hand[:, [0, -1]] > -1e-30).all()  # float32 gives exactly 0
    np.testing.assert_allclose(flat(ll), by_hand, rtol=1e-4, atol=0)  # eta itself is float32: |eta| * 6e-8
    result = arviz_stats.loo(tree)
    from arviz_base import from_dict

    reference = arviz_stats.loo(
        from_dict(
            {
                "posterior": {"a": tree.posterior["a"].values},
                "log_likelihood": {"y": by_hand.reshape(ll.shape)},
                "observed_data": {"y": LOGIT_Y.numpy()},
            }
        )
    )
    assert result.elpd == pytest.approx(reference.elpd, rel=1e-6)
    assert np.isfinite(result.elpd_i).all() and result.n_data_points == len(LOGIT_X)


def test_discrete_observations_stay_integers_for_count_plots():
    n_trials = torch.tensor([10.0, 12.0, 8.0, 15.0])
    successes = torch.tensor([3.0, 7.0, 2.0, 9.0])

    def binomial_model(n, k):
        p = pyro.sample("p", dist.Beta(1.0, 1.0))
        with pyro.plate("unit", len(n)):
            pyro.sample("k", dist.Binomial(total_count=n, probs=p), obs=k)

    def binomial_guide(n, k):
        pyro.sample("p", dist.Beta(22.0, 25.0))

    tree = to_datatree(binomial_model, binomial_guide, n_trials, successes, num_samples=200, prior=True)
    for group in ("observed_data", "posterior_predictive", "prior_predictive"):
        assert np.issubdtype(tree[group]["k"].dtype, np.integer), group
    np.testing.assert_array_equal(tree.observed_data["k"].values, [3, 7, 2, 9])
    rep = tree.posterior_predictive["k"].values
    assert (rep >= 0).all() and (rep <= n_trials.numpy().astype(int)).all()
    assert tree.posterior["p"].dtype.kind == "f"  # continuous sites are left alone
    import arviz_plots

    arviz_plots.plot_ppc_rootogram(tree, backend="none")  # refuses float counts


def test_dims_are_named_after_the_plates_and_user_dims_win():
    tree = to_datatree(logistic, logistic_guide, LOGIT_X, LOGIT_Y, num_samples=40, seed=0)
    assert tree.posterior["eta"].dims == ("chain", "draw", "row")
    assert tree.log_likelihood["y"].dims == ("chain", "draw", "row")
    assert tree.posterior_predictive["y"].dims == ("chain", "draw", "row")
    assert tree.observed_data["y"].dims == ("row",)
    tree = to_datatree(
        logistic,
        logistic_guide,
        LOGIT_X,
        LOGIT_Y,
        num_samples=40,
        seed=0,
        dims={"y": ["patient"], "eta": ["patient"], "absent_site": ["x"]},
        coords={"patient": [f"p{i}" for i in range(len(LOGIT_X))]},
    )
    assert tree.posterior["eta"].dims == ("chain", "draw", "patient")
    assert tree.observed_data["y"].coords["patient"].values[0] == "p0"
    # an event dimension and an unplated site keep ArviZ's default names
    tree = to_datatree(user_model, user_guide, Y, num_samples=40, param_state=set_exact_guide())
    assert tree.posterior["offset"].dims == ("chain", "draw", "group")
    assert tree.posterior["mu_plus_offsets"].dims == ("chain", "draw", "mu_plus_offsets_dim_0")
    assert tree.posterior["mu"].dims == ("chain", "draw")


def test_predictions_group_holds_draws_for_new_inputs():
    x_new = torch.tensor([-0.5, 0.0, 0.25, 40.0])
    tree = to_datatree(logistic, logistic_guide, LOGIT_X, LOGIT_Y, num_samples=2000, seed=0, predictions={"x": x_new})
    assert "predictions" in tree.children
    assert set(tree.posterior.data_vars) == {"a", "b", "eta"}  # the new rows are not posterior sites
    pred = tree.predictions
    assert pred["y"].dims == ("chain", "draw", "row") and pred.sizes["row"] == 4
    assert np.issubdtype(pred["y"].dtype, np.integer)
    # eta under the same draws as the posterior; y ~ Bernoulli(sigmoid(eta)) per draw.
    a, b = flat(tree.posterior["a"]), flat(tree.posterior["b"])
    np.testing.assert_allclose(
        flat(pred["eta"]), a[:, None] + b[:, None] * x_new.numpy()[None, :], rtol=1e-5, atol=1e-5
    )
    p = (1 / (1 + np.exp(-(a[:, None] + b[:, None] * x_new.numpy()[None, :])))).mean(0)
    se = np.sqrt(p * (1 - p) / 2000)
    assert (np.abs(flat(pred["y"]).mean(0) - p) < 4 * se + 1e-9).all()
    for parallel in (False,):  # the loop gives the same draws' deterministic values
        looped = to_datatree(
            logistic,
            logistic_guide,
            LOGIT_X,
            LOGIT_Y,
            num_samples=50,
            seed=0,
            predictions={"x": x_new},
            parallel=parallel,
        )
        np.testing.assert_allclose(
            flat(looped.predictions["eta"]),
            flat(looped.posterior["a"])[:, None] + flat(looped.posterior["b"])[:, None] * x_new.numpy()[None, :],
            rtol=1e-5,
            atol=1e-5,
        )


def test_joint_log_likelihood_sums_the_observed_sites_of_a_plate_per_row():
    scores = torch.tensor([[1.0, 0.5], [2.0, 1.5], [0.2, 0.1], [1.1, 0.9], [0.7, 1.4]])
    flags = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0])

    def two_outcomes(scores, flags):
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        with pyro.plate("school", scores.shape[0]):
            with pyro.plate("test", 2):
                pyro.sample("score", dist.Normal(mu, 1.0), obs=scores.T)
            pyro.sample("flag", dist.Bernoulli(logits=mu), obs=flags)

    def guide(scores, flags):
        pyro.sample("mu", dist.Normal(0.9, 0.3))

    tree = to_datatree(two_outcomes, guide, scores, flags, num_samples=400, joint_log_likelihood="school")
    joint = tree.log_likelihood["school_joint"]
    assert joint.dims == ("chain", "draw", "school")
    mu = tree.posterior["mu"].values[..., None]
    by_hand = (
        stats.norm(mu[..., None], 1.0).logpdf(scores.T.numpy()[None, None]).sum(-2)
        + flags.numpy() * mu
        - np.logaddexp(0.0, mu)
    )
    np.testing.assert_allclose(joint.values, by_hand, rtol=1e-6)
    assert np.isfinite(arviz_stats.loo(tree, var_name="school_joint").elpd)
    with pytest.raises(ValueError, match="joint_log_likelihood='nope' names no plate.*\\['school', 'test'\\]"):
        to_datatree(two_outcomes, guide, scores, flags, num_samples=8, joint_log_likelihood="nope")


def test_draws_split_into_chains_so_arviz_summary_accepts_them(caplog):
    import arviz

    tree = to_datatree(user_model, user_guide, Y, num_samples=1000, param_state=set_exact_guide())
    assert dict(tree.posterior["offset"].sizes) == {"chain": 4, "draw": 250, "group": 3}
    with caplog.at_level("INFO"):
        table = arviz.summary(tree)
    assert "Shape validation failed" not in caplog.text
    assert table.loc["mu", "r_hat"] == pytest.approx(1.0, abs=0.02)  # independent draws
    assert summary(tree).loc["mu", "n_draws"] == 1000
    two = to_datatree(user_model, user_guide, Y, num_samples=1000, param_state=set_exact_guide(), num_chains=2)
    assert dict(two.posterior.sizes)["chain"] == 2
    # ArviZ's layout for NumPyro SVI: one 'sample' dimension.
    flat_tree = to_datatree(
        user_model, user_guide, Y, num_samples=1000, param_state=set_exact_guide(), sample_dims="sample"
    )
    assert flat_tree.posterior["offset"].dims == ("sample", "group")
    assert flat_tree.log_likelihood["y"].dims == ("sample", "obs")
    np.testing.assert_array_equal(flat_tree.posterior["mu"].values, flat(tree.posterior["mu"]))
    table = summary(flat_tree)
    assert table.loc["mu", "n_draws"] == 1000 and "r_hat" not in table.columns
    with pytest.raises(ValueError, match="num_samples=10 does not split into num_chains=3"):
        to_datatree(user_model, user_guide, Y, num_samples=10, param_state=set_exact_guide(), num_chains=3)
    with pytest.raises(ValueError, match="sample_dims must be"):
        to_datatree(user_model, user_guide, Y, num_samples=10, param_state=set_exact_guide(), sample_dims="draws")
