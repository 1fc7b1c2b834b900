"""ProdLDA: structure, planted-topic recovery, a real corpus, uncertainty, persistence, errors."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from scipy.optimize import linear_sum_assignment

from bayesgen._runtime import seeded
from bayesgen.diagnostics import vi_khat_rows
from bayesgen.models.topic import (
    DocumentMultinomial,
    ProdLDA,
    TopicDecoder,
    TopicEncoder,
    dirichlet_laplace_prior,
    guide,
    local_guide,
    log_multinomial_coef,
    model,
    word_ranking,
)
from bayesgen.text import build_corpus


def planted_corpus(seed=0, K=4, V=40, D=800, length=80):
    """Documents from a known LDA process: topic k puts its mass on words 10k..10k+9."""
    rng = np.random.default_rng(seed)
    beta = np.full((K, V), 0.002)
    for k in range(K):
        beta[k, 10 * k : 10 * k + 10] = rng.dirichlet(np.full(10, 2.0))
    beta /= beta.sum(1, keepdims=True)
    theta = rng.dirichlet(np.full(K, 0.3), size=D)
    lengths = rng.poisson(length, size=D) + 5
    X = np.stack([rng.multinomial(n, t @ beta) for n, t in zip(lengths, theta, strict=True)])
    return X, theta, beta


@pytest.fixture(scope="module")
def planted():
    X, theta, beta = planted_corpus()
    lda = ProdLDA(num_topics=4, hidden_dim=50, num_epochs=60, batch_size=32, seed=0).fit(X)
    return lda, X, theta, beta


@pytest.fixture(scope="module")
def real_corpus():
    # Python's own help topics (the stdlib's pydoc_data): 79 real English documents.
    import pydoc_data.topics as topics

    return build_corpus(list(topics.topics.values()), min_df=3, max_df=0.5)


def test_model_and_guide_share_latent_sites_and_log_prob_is_finite():
    x = torch.poisson(torch.full((12, 30), 2.0))
    enc, dec = TopicEncoder(30, 3, 16, 0.2), TopicDecoder(30, 3, 0.2)
    g = poutine.trace(guide).get_trace(x, encoder=enc)
    m = poutine.trace(poutine.replay(model, trace=g)).get_trace(x, decoder=dec, num_topics=3)

    def latent(tr):
        return {
            n
            for n, s in tr.nodes.items()
            if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)
        }

    assert latent(m) == latent(g) == {"logtheta"}
    assert torch.isfinite(m.log_prob_sum()) and torch.isfinite(g.log_prob_sum())
    assert torch.allclose(m.nodes["theta"]["value"].sum(-1), torch.ones(12))


def test_document_multinomial_matches_torch_and_samples_the_document_lengths():
    probs = torch.softmax(torch.randn(5, 7), -1)
    totals = torch.tensor([3.0, 10.0, 1.0, 25.0, 7.0])
    d = DocumentMultinomial(probs, totals)
    x = d.sample()
    assert torch.equal(x.sum(-1), totals)
    expected = torch.stack(
        [torch.distributions.Multinomial(int(n), p).log_prob(v) for n, p, v in zip(totals, probs, x, strict=True)]
    )
    assert torch.allclose(d.log_prob(x), expected, atol=1e-4)
    # The coefficient computed once (dense or sparse counts) gives the same log density.
    for counts in (x, x.to_sparse()):
        coef = log_multinomial_coef(counts)
        assert torch.allclose(DocumentMultinomial(probs, totals, log_coef=coef).log_prob(x), expected, atol=1e-4)
    # Mean of many draws is N p.
    many = d.sample((4000,)).mean(0)
    assert torch.allclose(many, totals[:, None] * probs, atol=0.25)


def test_document_multinomial_draws_about_as_many_words_as_the_documents_hold(monkeypatch):
    # Lengths as skewed as a real corpus's: padding every row to the longest would draw ~30x the words.
    totals = torch.tensor([2000.0] + [30.0] * 40 + [0.0, 1.0])
    probs = torch.softmax(torch.randn(len(totals), 50), -1)
    drawn = []
    multinomial = torch.multinomial

    def counting(p, n, replacement=False):
        drawn.append(p.shape[0] * n)
        return multinomial(p, n, replacement=replacement)

    monkeypatch.setattr(torch, "multinomial", counting)
    x = DocumentMultinomial(probs, totals).sample((3,))
    assert torch.equal(x.sum(-1), totals.expand(3, -1))
    assert sum(drawn) <= 2 * 3 * float(totals.sum())


def test_recovers_planted_topics_up_to_permutation(planted):
    lda, X, theta, beta = planted
    top = lda._top_indices(10)
    overlap = np.array([[len(set(t) & set(range(10 * k, 10 * k + 10))) for k in range(4)] for t in top])
    rows, cols = linear_sum_assignment(-overlap)
    assert overlap[rows, cols].min() >= 7, overlap
    # Topic proportions of the first 200 documents track the planted ones.
    est = lda.transform(X[:200]).mean
    corr = [np.corrcoef(est[:, r], theta[:200, c])[0, 1] for r, c in zip(rows, cols, strict=True)]
    assert min(corr) > 0.85, corr
    assert lda.diversity(10) > 0.85
    assert np.mean(lda.losses_[-50:]) < np.mean(lda.losses_[:20])


def test_held_out_perplexity_beats_the_unigram_model(planted):
    lda, X, _, _ = planted
    X_new, _, _ = planted_corpus(seed=1, D=200)
    unigram = X.sum(0) / X.sum()
    unigram_perplexity = float(np.exp(-(X_new * np.log(unigram)).sum() / X_new.sum()))
    assert lda.perplexity(X_new) < 0.85 * unigram_perplexity


def test_uncertainty_shrinks_with_document_length(planted):
    lda, X, _, _ = planted
    doc = X[:50]
    short = lda.transform(doc, seed=0)
    long = lda.transform(doc * 10, seed=0)
    np.testing.assert_allclose(short.mean.sum(1), 1.0, atol=1e-5)
    assert np.all(short.low <= short.mean + 1e-9) and np.all(short.mean <= short.high + 1e-9)
    assert long.sd.mean() < short.sd.mean()
    assert len(short.to_frame()) == 50 * 4


def _matched_topics(lda):
    """Fitted topic → planted topic, matched by their top-10 words."""
    top = lda._top_indices(10)
    overlap = np.array([[len(set(t) & set(range(10 * k, 10 * k + 10))) for k in range(4)] for t in top])
    return linear_sum_assignment(-overlap)


def _elbo_per_document(lda, x, loc, scale, num_samples=400):
    """Monte Carlo ELBO of each document under Normal(loc, scale), from the model's own densities."""
    loc0, scale0 = dirichlet_laplace_prior(int(lda.num_topics), float(lda.concentration))
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        z = loc + scale * torch.randn((num_samples, *loc.shape), generator=gen)
        log_w = (
            DocumentMultinomial(lda.decoder_(torch.softmax(z, -1)), x.sum(-1)).log_prob(x)
            + torch.distributions.Normal(loc0, scale0).log_prob(z).sum(-1)
            - torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)
        )
    return log_w.mean(0).numpy(), log_w.std(0).numpy() / math.sqrt(num_samples)


def test_refining_each_document_raises_its_elbo_and_moves_its_mixture_toward_the_planted_one(planted):
    lda, X, theta, _ = planted
    x = torch.as_tensor(X[:200], dtype=torch.float32)
    lda._set_training(False)
    with seeded(0):
        encoder = lda._local_posterior(x, 0)
    with seeded(0):
        refined = lda._local_posterior(x, 100)
    before, se_before = _elbo_per_document(lda, x, *encoder)
    after, se_after = _elbo_per_document(lda, x, *refined)
    gain, se = after - before, np.sqrt(se_before**2 + se_after**2)
    assert gain.mean() > 3 * gain.std() / math.sqrt(len(gain)), gain.mean()
    # No document loses ELBO beyond three Monte Carlo standard errors of the two estimates.
    assert (gain > -3 * se).all(), gain.min()
    # The reported mixtures (transform's default refine_steps) are closer to the planted proportions.
    rows, cols = _matched_topics(lda)
    tv = {
        steps: 0.5 * np.abs(lda.transform(X[:200], refine_steps=steps).mean[:, rows] - theta[:200][:, cols]).sum(1)
        for steps in (0, None)
    }
    assert tv[None].mean() < tv[0].mean() - 3 * np.std(tv[0] - tv[None]) / math.sqrt(200), (
        tv[0].mean(),
        tv[None].mean(),
    )


def test_refinement_lowers_the_per_document_khat_where_the_encoder_is_far_off():
    # Long documents and a short fit: sharp posteriors that the encoder misses for most documents.
    X, _, _ = planted_corpus(seed=2, D=200, length=400)
    lda = ProdLDA(num_topics=4, hidden_dim=50, num_epochs=10, batch_size=32, seed=0).fit(X)
    x = torch.as_tensor(X, dtype=torch.float32)
    m, _ = lda._model_and_guide()
    shares, medians = {}, {}
    for steps in (0, 100):
        with seeded(0):
            loc, scale = lda._local_posterior(x, steps)
        rows = vi_khat_rows(
            m,
            functools.partial(local_guide, loc=loc, scale=scale),
            x,
            plate="document",
            num_samples=500,
            param_state=lda._param_state,
            seed=1,
            warn=False,
        )
        shares[steps], medians[steps] = rows.shares["unreliable"], float(np.median(rows.khat))
    assert shares[0] > 0.5 and medians[0] > 0.7, (shares, medians)
    # 200 documents: a binomial share's sd is at most 0.035, so a drop of 0.2 is far beyond noise.
    assert shares[100] < shares[0] - 0.2 and medians[100] < medians[0], (shares, medians)


def test_a_documents_refined_guide_does_not_depend_on_the_other_documents(planted):
    lda, X, _, _ = planted
    x = torch.as_tensor(X[:40], dtype=torch.float32)
    with seeded(3):
        alone = lda._local_posterior(x[:5], 30)
    with seeded(3):
        together = lda._local_posterior(x, 30)
    for a, b in zip(alone, together, strict=True):
        torch.testing.assert_close(a, b[:5], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(alone[0], lda._local_posterior(x[:5], 0)[0])  # the steps did move it


def test_real_corpus_gives_readable_topics(real_corpus):
    lda = ProdLDA(num_topics=5, hidden_dim=64, num_epochs=100, batch_size=16, learning_rate=0.01, seed=0).fit(
        real_corpus
    )
    table = lda.topics(8)
    assert list(table.columns) == ["topic", "rank", "word", "weight"] and len(table) == 40
    assert set(table["word"]) <= set(real_corpus.vocabulary)
    coherence = lda.coherence(real_corpus, top_n=8)
    assert coherence.shape == (5,) and np.all((coherence >= -1) & (coherence <= 1))
    # Better than a uniform distribution over the vocabulary (a tiny corpus: 79 documents).
    assert lda.perplexity(real_corpus) < 0.8 * real_corpus.num_words
    # Raw strings go through the fitted vocabulary.
    mix = lda.transform(
        ["the for statement iterates over the items of a sequence", "an exception is raised when an error occurs"]
    )
    assert mix.mean.shape == (2, 5)
    fig = lda.plot_topics(6)
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 5


def test_sparse_and_dense_batches_give_the_same_fit():
    X, _, _ = planted_corpus(D=200)
    dense = ProdLDA(num_topics=4, num_epochs=2, batch_size=20, sparse=False, seed=0).fit(X)
    sparse = ProdLDA(num_topics=4, num_epochs=2, batch_size=20, sparse=True, seed=0).fit(X)
    assert sparse.sparse_ and not dense.sparse_
    np.testing.assert_allclose(sparse.losses_, dense.losses_, rtol=1e-5)


def test_early_stopping_on_held_out_loss_and_resume(tmp_path):
    X, _, _ = planted_corpus(D=300)
    lda = ProdLDA(
        num_topics=4, num_epochs=300, batch_size=30, learning_rate=0.01, validation_fraction=0.2, patience=3, seed=0
    ).fit(X)
    hist = lda.history_
    assert len(hist) < 300 and "val_elbo" in hist
    assert lda.best_epoch_ == int(hist["epoch"][hist["val_elbo"].idxmax()])
    # Extending a fit (2 epochs, then resumed to 4) repeats the 4-epoch fit when nothing is scheduled.
    settings = {"num_topics": 4, "batch_size": 30, "seed": 0, "batch_norm_anneal": float("inf")}
    whole = ProdLDA(num_epochs=4, **settings).fit(X)
    ProdLDA(num_epochs=2, **settings).fit(X, checkpoint=tmp_path / "ck.pt")
    resumed = ProdLDA(num_epochs=4, **settings).fit(X, checkpoint=tmp_path / "ck.pt", resume=True)
    np.testing.assert_allclose(resumed.losses_, whole.losses_, rtol=1e-5)


def test_an_interrupted_fit_resumes_on_its_batch_norm_schedule(tmp_path):
    X, _, _ = planted_corpus(D=300)
    settings = {"num_topics": 4, "batch_size": 30, "seed": 0, "num_epochs": 4, "batch_norm_anneal": 0.75}
    whole = ProdLDA(**settings).fit(X)
    assert float(whole.decoder_.bn_weight) == 0.0  # faded out by 75 % of the 40 steps
    interrupted = ProdLDA(**settings)
    scheduled = interrupted._before_step

    def ctrl_c_at_step_17(step, num_steps):
        if step == 17:
            raise KeyboardInterrupt
        scheduled(step, num_steps)

    interrupted._before_step = ctrl_c_at_step_17
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(X, checkpoint=tmp_path / "ck.pt")
    resumed = ProdLDA(**settings).fit(X, checkpoint=tmp_path / "ck.pt", resume=True)
    np.testing.assert_allclose(resumed.losses_, whole.losses_, rtol=1e-5)
    # The schedule matters: a fit that keeps batch norm throughout takes other steps after step 0.
    kept = ProdLDA(**{**settings, "batch_norm_anneal": float("inf")}).fit(X)
    assert float(kept.decoder_.bn_weight) == 1.0
    assert not np.allclose(kept.losses_[1:], whole.losses_[1:], rtol=1e-3)


def test_save_load_keeps_weights_and_batch_norm_statistics(planted, tmp_path):
    lda, X, _, _ = planted
    lda.save(tmp_path / "lda")
    loaded = ProdLDA.load(tmp_path / "lda", device=lda.device_)  # same device: seeded draws repeat
    assert loaded.vocabulary_ == lda.vocabulary_
    np.testing.assert_allclose(loaded.transform(X[:20]).mean, lda.transform(X[:20]).mean, rtol=1e-5, atol=1e-7)
    assert loaded.topics(5).equals(lda.topics(5))
    # On the CPU (a GPU fit on a machine without one): same weights, so the same topics; the document
    # mixtures are Monte Carlo means, equal up to the CPU's other random stream.
    on_cpu = ProdLDA.load(tmp_path / "lda", device="cpu")
    np.testing.assert_allclose(on_cpu.topics(5)["weight"], lda.topics(5)["weight"], rtol=1e-4)
    np.testing.assert_allclose(
        on_cpu.transform(X[:20], num_samples=4000).mean, lda.transform(X[:20], num_samples=4000).mean, atol=0.03
    )


def test_the_decoder_without_background_learns_batch_norm_shift_and_older_files_load_without_it(tmp_path):
    from saved_models import resign

    X, _, _ = planted_corpus(D=200)
    plain = ProdLDA(num_topics=4, num_epochs=3, batch_size=20, background=False, seed=0).fit(X)
    shift = plain.decoder_.bn_shift.detach().clone()
    assert shift.shape == (40,) and float(shift.abs().max()) > 0  # learned, from 0
    assert ProdLDA(num_topics=4, num_epochs=1, batch_size=20, seed=0).fit(X).decoder_.bn_shift is None
    # A file fitted by a decoder without the shift loads as that decoder: the same model with the shift at 0.
    folder = plain.save(tmp_path / "plain")
    saved = torch.load(folder / "tensors.pt", weights_only=True)
    del saved["params"]["decoder$$$bn_shift"]
    torch.save(saved, folder / "tensors.pt")
    resign(folder)
    old = ProdLDA.load(folder, device="cpu")
    assert old.decoder_.bn_shift is None
    with torch.no_grad():
        plain.decoder_.bn_shift.zero_()
    try:
        np.testing.assert_allclose(old.topic_word().to_numpy(), plain.topic_word().to_numpy(), rtol=1e-5)
    finally:
        with torch.no_grad():
            plain.decoder_.bn_shift.copy_(shift)


@pytest.mark.slow
def test_the_tour_spec_replicates_the_help_pages_word_frequencies():
    # The tour's ProdLDA (the original decoder: batch norm kept, no background term) on Python's help pages.
    from bayesgen.diagnostics import predictive_check
    from bayesgen.specs import fit_spec, load_spec
    from bayesgen.tour import specs_dir

    lda = fit_spec(load_spec(specs_dir() / "topic_python_help.toml"), device="cpu").estimator
    tree = lda.to_arviz(200, seed=0)
    table = predictive_check(lda, tree=tree).table
    # The ten most frequent words' share of the tokens (about 11 %) is replicated within 10 %.
    shares = table[table.index.str.startswith("share of tokens[")]
    assert abs(shares["replicated_mean"].sum() / shares["observed"].sum() - 1) < 0.10, shares
    # Replicated documents are no flatter than one word distribution shared by all documents (their pooled
    # word frequencies) would make them. (Neither reaches the observed count: the pages repeat their own words
    # more than five topics allow; benchmarks/RESULTS.md.)
    x = tree.observed_data["words"].values.astype(float)
    pooled = x.sum(0) / x.sum()
    one_distribution = (1 - (1 - pooled) ** x.sum(1, keepdims=True)).sum(1).mean()
    assert table.loc["distinct words per document[mean]", "replicated_mean"] < one_distribution


def test_to_arviz_has_document_topics_and_topic_word(planted):
    lda, _, _, _ = planted
    tree = lda.to_arviz(40, docs=[0, 1, 2])
    assert tree.posterior["theta"].dims == ("chain", "draw", "document", "topic")
    np.testing.assert_allclose(tree.posterior["theta"].sum("topic"), 1.0, atol=1e-5)
    assert tree["topic_word"]["topic_word"].shape == (4, 40)
    assert tree.log_likelihood["words"].shape == (4, 10, 3)
    assert (
        tree.posterior_predictive["words"].sum("word").values[0, 0].tolist()
        == tree.observed_data["words"].sum("word").values.tolist()
    )


def test_relevance_ranks_between_topic_probability_and_lift_over_the_background(planted, tmp_path, make_older):
    lda, X, _, _ = planted
    probs = lda.topic_word().to_numpy()
    background = torch.log_softmax(lda.decoder_.background.detach(), -1).cpu().numpy()
    # The background (started at the log word frequencies) still tracks them after training.
    assert np.corrcoef(background, np.log1p(X.sum(0)))[0, 1] > 0.9
    default = lda.relevance, lda.exclusivity
    try:
        lda.exclusivity = 0.0  # relevance alone
        lda.relevance = 1.0  # the topic's own word probabilities
        assert lda._top_indices(10) == [list(np.argsort(-p, kind="stable")[:10]) for p in probs]
        lda.relevance = 0.0  # lift over the background
        lift = np.log(probs) - background
        assert [set(t) for t in lda._top_indices(10)] == [set(np.argsort(-r)[:10]) for r in lift]
        lda.relevance = 0.5  # Sievert & Shirley's mix of the two
        mix = 0.5 * np.log(probs) + 0.5 * lift
        assert [set(t) for t in lda._top_indices(10)] == [set(np.argsort(-r)[:10]) for r in mix]
        # Exclusivity: less γ times the word's log-probability gap to its most probable other topic.
        lda.exclusivity = 3.0
        logp = np.log(probs)
        rival = np.stack([np.delete(logp, k, 0).max(0) for k in range(len(logp))])
        score = mix - 3.0 * np.maximum(rival - logp, 0.0)
        assert [set(t) for t in lda._top_indices(10)] == [set(np.argsort(-r)[:10]) for r in score]
    finally:
        lda.relevance, lda.exclusivity = default
    # Without a background term the ranking is the topic's word probabilities, whatever relevance says.
    X, _, _ = planted_corpus(D=200)
    plain = ProdLDA(
        num_topics=4,
        num_epochs=2,
        batch_size=20,
        background=False,
        batch_norm_anneal=float("inf"),
        relevance=0.0,
        seed=0,
    ).fit(X)
    assert plain.decoder_.background is None
    assert plain._top_indices(10) == [list(np.argsort(-p, kind="stable")[:10]) for p in plain.topic_word().to_numpy()]
    # A model saved before the background term and batch-norm fading existed (no such hyperparameters,
    # weights or buffer) loads with the settings it was fitted with, not today's defaults.
    make_older(
        plain.save(tmp_path / "old"),
        settings=["background", "batch_norm_anneal", "relevance"],
        tensors=["buffer.decoder.bn_weight"],
    )
    old = ProdLDA.load(tmp_path / "old", device="cpu")
    assert old.background is False and old.batch_norm_anneal == float("inf")
    assert old.topics(5).equals(plain.topics(5))


def test_exclusivity_lists_a_shared_word_under_the_topic_that_uses_it_most():
    # Two topics share word 0; topic 0 gives it more probability. Without exclusivity it heads both.
    log_p = torch.log(torch.tensor([[0.5, 0.3, 0.1, 0.1], [0.4, 0.1, 0.3, 0.2]]))
    log_b = torch.log(torch.full((4,), 0.25))
    plain = word_ranking(log_p, log_b, relevance=1.0, exclusivity=0.0)
    assert plain.argmax(1).tolist() == [0, 0]
    ranked = word_ranking(log_p, log_b, relevance=1.0, exclusivity=4.0)
    assert ranked.argmax(1).tolist() == [0, 2]
    # The penalty is γ times the gap to the rival topic, and nothing where a topic uses the word most.
    assert torch.allclose(ranked[0, :2], plain[0, :2]) and torch.allclose(ranked[1, 2:], plain[1, 2:])
    assert float(plain[1, 0] - ranked[1, 0]) == pytest.approx(4.0 * math.log(0.5 / 0.4), rel=1e-5)
    # A tie at the top costs neither topic anything; a single topic has no rival.
    tied = torch.log(torch.tensor([[0.5, 0.5], [0.5, 0.5]]))
    assert torch.equal(word_ranking(tied, tied[0], 0.5, 4.0), word_ranking(tied, tied[0], 0.5, 0.0))
    assert torch.equal(word_ranking(log_p[:1], log_b, 0.5, 4.0), word_ranking(log_p[:1], log_b, 0.5, 0.0))


def test_a_model_saved_before_the_exclusivity_term_keeps_its_ranking(planted, tmp_path, make_older):
    lda, _, _, _ = planted
    before = lda.exclusivity
    lda.save(tmp_path / "m")
    make_older(tmp_path / "m", settings=["exclusivity"], extra=["word_ranking"])
    old = ProdLDA.load(tmp_path / "m", device="cpu")
    assert old.exclusivity == 0.0 and before > 0
    lda.exclusivity = 0.0
    try:
        assert old.topics(5).equals(lda.topics(5))
    finally:
        lda.exclusivity = before


def test_bad_input_is_clear(planted):
    lda, X, _, _ = planted
    with pytest.raises(ValueError, match="negative"):
        ProdLDA(num_epochs=1).fit(-X)
    with pytest.raises(ValueError, match="39 columns; the model was fitted on a vocabulary of 40"):
        lda.transform(X[:, :39])
    with pytest.raises(ValueError, match="patience"):
        ProdLDA(num_epochs=1, patience=2).fit(X)
    with pytest.raises(ValueError, match="batch_size"):
        ProdLDA(num_epochs=1, batch_size=5000).fit(X)
    with pytest.raises(ValueError, match="batch_size must be at least 2"):
        ProdLDA(num_epochs=1, batch_size=1).fit(X)
    with pytest.raises(TypeError, match="not one string"):
        lda.transform("a single string")
    with pytest.raises(ValueError, match="vocabulary is empty"):
        ProdLDA(num_epochs=1).fit(["the and", "of the"])
    with pytest.raises(ValueError, match="relevance must be a number in \\[0, 1\\]"):
        ProdLDA(num_epochs=1, relevance=1.5).fit(X)
    lda.relevance = 5  # set on a fitted model, as docs/models.md suggests for re-ranking
    with pytest.raises(ValueError, match="relevance must be a number in \\[0, 1\\]"):
        lda.topics()
    lda.relevance = 0.7
    with pytest.raises(ValueError, match="exclusivity must be a finite number >= 0"):
        ProdLDA(num_epochs=1, exclusivity=-1.0).fit(X)
    lda.exclusivity = float("inf")
    with pytest.raises(ValueError, match="exclusivity must be a finite number >= 0"):
        lda.diversity()
    lda.exclusivity = 4.0
    with pytest.raises(ValueError, match="batch_norm_anneal must be a number in \\[0, inf\\]"):
        ProdLDA(num_epochs=1, batch_norm_anneal=-0.1).fit(X)
    with pytest.raises(TypeError, match="batch_norm_anneal must be a number"):
        ProdLDA(num_epochs=1, batch_norm_anneal=None).fit(X)
    with pytest.raises(TypeError, match="background must be True or False"):
        ProdLDA(num_epochs=1, background="yes").fit(X)
    with pytest.raises(ValueError, match="refine_steps must be an integer >= 0"):
        ProdLDA(num_epochs=1, refine_steps=-1).fit(X)
    with pytest.raises(ValueError, match="refine_steps must be an integer >= 0"):
        lda.transform(X[:3], refine_steps=2.5)


def test_transform_keeps_one_row_per_document_and_matches_dataframe_columns_by_name():
    import pandas as pd

    X, _, _ = planted_corpus(D=200)
    words = [f"word{j}" for j in range(X.shape[1])]
    lda = ProdLDA(num_topics=4, hidden_dim=20, num_epochs=2, batch_size=50, seed=0).fit(pd.DataFrame(X, columns=words))
    assert list(lda.vocabulary_) == words
    frame = pd.DataFrame(X[:6], columns=words)
    np.testing.assert_allclose(lda.transform(frame[words[::-1]]).mean, lda.transform(frame).mean)
    with pytest.raises(ValueError, match=r"columns do not match the model's vocabulary_: missing \['word0'"):
        lda.transform(frame.set_axis([f"other{j}" for j in range(X.shape[1])], axis=1))
    # Unnamed columns (pandas' default 0..n-1) are taken by position, like an array.
    np.testing.assert_allclose(lda.transform(pd.DataFrame(X[:6])).mean, lda.transform(X[:6]).mean)
    # Columns that happen to be named like the default vocabulary are still matched by name.
    default = ProdLDA(num_topics=4, hidden_dim=20, num_epochs=2, batch_size=50, seed=0).fit(X)
    named = pd.DataFrame(X[:6], columns=default.vocabulary_)
    np.testing.assert_allclose(default.transform(named[named.columns[::-1]]).mean, default.transform(X[:6]).mean)
    # Empty documents keep their place, as NaN rows, so the output lines up with the input.
    docs = np.r_[X[:2], np.zeros((1, X.shape[1]), int), X[2:4]]
    with pytest.warns(UserWarning, match="1 of 5 documents have no word"):
        out = lda.transform(docs)
    assert out.mean.shape == (5, 4) and np.isnan(out.mean[2]).all() and np.isnan(out.high[2]).all()
    np.testing.assert_allclose(out.mean[[0, 1, 3, 4]], lda.transform(X[:4]).mean)
    with pytest.raises(ValueError, match="num_samples must be an integer >= 1"):
        lda.transform(X[:4], num_samples=0)
    with pytest.raises(ValueError, match="ci_prob must be a number in"):
        lda.transform(X[:4], ci_prob=1.5)
    with pytest.raises(ValueError, match="num_samples must be an integer >= 1"):
        lda.perplexity(X[:4], num_samples=-1)


@pytest.mark.cuda
def test_fit_on_cuda_dense_and_sparse():
    X, _, _ = planted_corpus(D=200)
    for sparse in (False, True):
        lda = ProdLDA(num_topics=4, num_epochs=2, batch_size=20, sparse=sparse, device="cuda", seed=0).fit(X)
        assert lda._x.device.type == "cuda" and np.isfinite(lda.losses_).all()
        assert lda.decoder_.background.device.type == "cuda" and float(lda.decoder_.bn_weight) == 0.0
        assert lda.transform(X[:5]).mean.shape == (5, 4)


def test_word_lists_plots_and_arviz_rows_check_their_arguments():
    X, _, _ = planted_corpus(D=200)
    lda = ProdLDA(num_topics=4, hidden_dim=20, num_epochs=2, batch_size=50, seed=0).fit(X.astype(np.float16))
    assert lda.vocabulary_ == [f"w{j}" for j in range(X.shape[1])]  # float16 counts are accepted
    with pytest.raises(ValueError, match="top_n must be an integer >= 1"):
        lda.topics(-1)
    with pytest.raises(ValueError, match="top_n must be an integer >= 2"):
        lda.coherence(X, top_n=1)
    with pytest.raises(ValueError, match=r"topics must be topic numbers in 0..3"):
        lda.plot_topics(topics=[7])
    with pytest.raises(ValueError, match="ncols must be an integer >= 1"):
        lda.plot_topics(ncols=0)
    with pytest.raises(ValueError, match="docs must be positions in 0..199"):
        lda.to_arviz(5, docs=[1000])
    with pytest.raises(ValueError, match="non-empty sequence of integer row positions"):
        lda.to_arviz(5, docs=[])
    with pytest.raises(TypeError, match="numeric \\(real-valued\\)"):
        ProdLDA(num_epochs=1).fit(X.astype(complex))
    assert lda.to_arviz(5, docs=[0, 5]).posterior.sizes["document"] == 2


def test_decoder_learning_rate_auto_raises_it_for_short_runs_only(tmp_path, monkeypatch):
    lda = ProdLDA(learning_rate=0.01)
    assert lda._resolve_decoder_learning_rate(120) == pytest.approx(0.05)  # capped at 5x
    assert lda._resolve_decoder_learning_rate(300) == pytest.approx(0.02)
    assert lda._resolve_decoder_learning_rate(600) == pytest.approx(0.01)  # long runs: unchanged
    assert lda._resolve_decoder_learning_rate(5000) == pytest.approx(0.01)
    assert ProdLDA(decoder_learning_rate=0.003)._resolve_decoder_learning_rate(10) == pytest.approx(0.003)
    # The optimiser gives the decoder's parameters (and only those) the resolved rate.
    rates = {}
    original = torch.optim.Adam.__init__

    def record(self, params, **kwargs):
        params = list(params)
        rates[tuple(params[0].shape)] = kwargs["lr"]
        original(self, params, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "__init__", record)
    counts = np.random.default_rng(0).poisson(1.0, size=(200, 30))
    fitted = ProdLDA(num_topics=3, hidden_dim=8, num_epochs=2, batch_size=50, seed=0).fit(counts)  # 8 steps
    monkeypatch.undo()
    assert fitted.decoder_learning_rate_ == pytest.approx(0.05)
    assert rates[(30, 3)] == rates[(30,)] == pytest.approx(0.05)  # beta and background
    assert rates[(8, 30)] == pytest.approx(0.01)  # the encoder's first layer
    assert ProdLDA.load(fitted.save(tmp_path / "m")).decoder_learning_rate_ == pytest.approx(0.05)
    with pytest.raises(TypeError, match="decoder_learning_rate must be a number"):
        ProdLDA(decoder_learning_rate="fast").fit(counts)


def test_settings_that_json_cannot_hold_and_older_files_load(tmp_path, make_older):

    counts = np.random.default_rng(0).poisson(1.0, size=(120, 20))
    kept = ProdLDA(num_topics=3, hidden_dim=8, num_epochs=1, batch_size=40, batch_norm_anneal=float("inf"), seed=0).fit(
        counts
    )
    folder = kept.save(tmp_path / "inf")
    assert ProdLDA.load(folder).batch_norm_anneal == float("inf")  # saved as the string "inf"
    # A file from before decoder_learning_rate: it was trained with the encoder's rate, and loads so.
    make_older(folder, settings=["decoder_learning_rate"], extra=["decoder_learning_rate_"])
    old = ProdLDA.load(folder)
    assert old.decoder_learning_rate == old.decoder_learning_rate_ == 0.01
    words = ProdLDA(num_topics=3, hidden_dim=8, num_epochs=1, batch_size=40, stop_words=["nan", "inf"], seed=0).fit(
        counts
    )  # words that look like non-finite numbers stay words
    assert ProdLDA.load(words.save(tmp_path / "words")).stop_words == ["nan", "inf"]
    with pytest.raises(ValueError, match="stop_words must be 'english', None or a list of words"):
        ProdLDA(stop_words=("the", "a")).fit(counts)


def test_topic_bars_have_readable_ticks():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    X, _, _ = planted_corpus(D=200)
    lda = ProdLDA(num_topics=5, num_epochs=2, batch_size=20, seed=0).fit(X)
    fig = lda.plot_topics(10)
    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        words = [t for t in ax.get_yticklabels() if t.get_text()]
        assert len(words) == 10 and min(t.get_fontsize() for t in words) >= 8  # points: readable at 110 dpi
        ticks = [t for t in ax.get_xticklabels() if t.get_text() and t.get_visible()]
        assert 2 <= len(ticks) <= 4
        boxes = sorted((t.get_window_extent(renderer) for t in ticks), key=lambda b: b.x0)
        gap = 0.5 * ticks[0].get_fontsize() * fig.dpi / 72  # half a character's height, in pixels
        assert all(right.x0 - left.x1 >= gap for left, right in zip(boxes, boxes[1:], strict=False))
