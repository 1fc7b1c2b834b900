# ---
# jupyter:
#   jupytext:
#     formats: py:percent,ipynb
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # Topics from raw text with ProdLDA
#
# Pinned to `models/topic_python_help.toml` (seed 0); `BAYESGEN_SMOKE=1` runs a fast version.
# The corpus is one every Python installation ships: the 79 help topics behind `help("for")`,
# `help("EXCEPTIONS")` and friends. We go from raw text to a document-term matrix, fit a
# ProdLDA topic model, read its topics, look at documents' topic mixtures with their
# uncertainty, and score the topics on held-out documents (NPMI coherence, diversity,
# perplexity). `models/topic_news.toml` runs the same on 3,824 news articles.

# %%
import os
import pydoc_data.topics
from pathlib import Path

import numpy as np

from bayesgen import ProdLDA
from bayesgen.plots import show_figure
from bayesgen.runs.spec import load_spec
from bayesgen.text import build_corpus

SMOKE = os.environ.get("BAYESGEN_SMOKE") == "1"
HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
ROOT = next(p for p in (HERE, *HERE.parents) if (p / "pyproject.toml").is_file())  # the checkout
FIGURES = ROOT / "runs" / "tutorials" / "topic_model"


def show(fig, name):
    """Inline in a notebook; as a script, a PNG under FIGURES."""
    path = show_figure(fig, name, folder=FIGURES)
    if path is not None:
        print(f"figure written to {path.relative_to(ROOT)}")


spec = load_spec(ROOT / "models" / "topic_python_help.toml")
seed = spec["run"]["seed"]
names = list(pydoc_data.topics.topics)
docs = list(pydoc_data.topics.topics.values())
print(len(docs), "documents;", docs[names.index("for")][:160].replace("\n", " "), "...")

# %% [markdown]
# ## From text to counts
# Lower-case, keep words of two or more letters, drop English stop words and words in fewer
# than `min_df` documents or more than `max_df` of them. Documents left empty are dropped
# with a warning (and counted).

# %%
data = spec["data"]
corpus = build_corpus(docs, stop_words=data["stop_words"], min_df=data["min_df"], max_df=data["max_df"])
train, test = corpus.split(data["test_fraction"], seed=seed)
print(corpus, "→", train.num_docs, "training and", test.num_docs, "held-out documents")

# %% [markdown]
# ## Fit
# Each document's topic proportions are softmax(logtheta) with a logistic-normal prior that
# approximates a Dirichlet; words come from a *product of experts* over the topics. The guide
# is an inference network (two layers, dropout, batch-normalised outputs), trained by SVI.

# %%
settings = {**spec["model"], **spec["inference"], "seed": seed}
if SMOKE:
    settings.update(num_epochs=5)
lda = ProdLDA(**settings).fit(train)
print(lda.history_.tail(2).round(2).to_string(index=False))

# %% [markdown]
# ## Topics
# `topics(top_n)` lists each topic's top words with their weights (the decoder's word
# distribution for a document entirely in that topic). This spec uses ProdLDA's original
# decoder, which suits such a small corpus, so they are simply the most probable words. With
# the default decoder (a background word frequency, `background=True`) words are ranked by
# *relevance* `λ` (λ = 1 would list the most probable words, which the background makes common
# to every topic; the default λ = 0.7 also weighs how much more frequent a word is in this topic
# than in the corpus as a whole), less a penalty (`exclusivity`) for words that another topic
# uses more, so near-duplicate topics do not all show the same words.

# %%
top = lda.topics(spec["report"]["top_n"])
for k, words in top.groupby("topic")["word"]:
    print(k, " ".join(words))
show(lda.plot_topics(spec["report"]["top_n"]), "topics")

# %% [markdown]
# ## Document mixtures, with uncertainty
# `transform` returns the posterior mean, sd and a 90 % interval of each document's topic
# proportions. New text goes through the fitted vocabulary.

# %%
mix = lda.transform(
    [
        "The for statement iterates over the items of any sequence, in order.",
        "An exception is raised when an error is detected; try and except handle it.",
    ]
)
print(np.round(mix.mean, 2))
print(np.round(mix.high - mix.low, 2))

# %% [markdown]
# ## How good are the topics?
# NPMI coherence counts how often a topic's top words appear together in *held-out*
# documents (−1 never, 1 always); diversity is the share of distinct words among all topics'
# top 25; perplexity is exp(−ELBO per word) on held-out documents (an upper bound).

# %%
print("NPMI per topic:", np.round(lda.coherence(test, top_n=spec["report"]["top_n"]), 3))
print(
    "diversity:",
    round(lda.diversity(25), 3),
    " held-out perplexity:",
    round(lda.perplexity(test), 1),
    " vocabulary:",
    corpus.num_words,
)
tree = lda.to_arviz(100, docs=range(5))
print(tree.posterior["theta"].mean(("chain", "draw")).round(2).values)
