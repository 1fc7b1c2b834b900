"""Text pipeline: raw text, counts and LDA-C → Corpus; topic-quality measures; bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp

from bayesgen.text import (
    build_corpus,
    corpus_from_counts,
    load_reuters,
    npmi_coherence,
    read_ldac,
    read_text_csv,
    read_text_folder,
    topic_diversity,
    write_ldac,
)


def test_build_corpus_tokenises_filters_and_counts():
    docs = ["The cat sat on the mat.", "A cat and a dog!", "The dog ran; the dog sat.", "42 99"]
    with pytest.warns(UserWarning, match="dropped 1 of 4"):
        c = build_corpus(docs, min_df=1, max_df=1.0)
    assert c.vocabulary == ["cat", "dog", "mat", "ran", "sat"]  # stop words and numbers gone, lower-cased
    assert c.dropped == 1 and list(c.doc_ids) == [0, 1, 2]
    dense = c.counts.toarray()
    assert dense[2, c.vocabulary.index("dog")] == 2 and dense.dtype == np.int64
    # min_df / max_df filter by document frequency; a fixed vocabulary skips filtering.
    assert build_corpus(docs[:3], min_df=2, max_df=1.0).vocabulary == ["cat", "dog", "sat"]
    fixed = build_corpus(["dog dog zebra"], vocabulary=["cat", "dog"])
    assert fixed.counts.toarray().tolist() == [[0, 2]]


def test_bad_text_input_is_clear():
    with pytest.raises(ValueError, match="vocabulary is empty"):
        build_corpus(["the and of", "a an the"], min_df=1)
    with pytest.raises(TypeError, match="strings"):
        build_corpus(["fine text", 3])
    with pytest.raises(ValueError, match="no documents"):
        build_corpus([])


def test_counts_matrix_checks():
    good = corpus_from_counts(sp.csr_matrix(np.array([[1, 0, 2], [0, 3, 0]])), ["a", "b", "c"])
    assert good.num_docs == 2 and good.num_words == 3
    with pytest.raises(ValueError, match="negative"):
        corpus_from_counts(np.array([[1, -1]]), ["a", "b"])
    with pytest.raises(ValueError, match="whole numbers"):
        corpus_from_counts(np.array([[1.5, 1]]), ["a", "b"])
    with pytest.raises(ValueError, match="3 words but counts has 2 columns"):
        corpus_from_counts(np.array([[1, 1]]), ["a", "b", "c"])
    with pytest.raises(ValueError, match="NaN"):
        corpus_from_counts(np.array([[np.nan, 1]]), ["a", "b"])
    with pytest.raises(TypeError, match="numeric"):
        corpus_from_counts(np.array([["x", "y"]], dtype=object))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserWarning, match="empty"):
            corpus_from_counts(np.array([[0, 0], [1, 2]]), ["a", "b"])


def test_ldac_round_trip_and_errors(tmp_path):
    c = corpus_from_counts(np.array([[1, 0, 2], [0, 3, 0], [4, 1, 1]]), ["x", "y", "z"])
    write_ldac(c, tmp_path / "c.ldac", tmp_path / "c.vocab")
    assert (tmp_path / "c.ldac").read_text().splitlines()[0] == "2 0:1 2:2"
    back = read_ldac(tmp_path / "c.ldac", tmp_path / "c.vocab")
    assert back.vocabulary == ["x", "y", "z"]
    np.testing.assert_array_equal(back.counts.toarray(), c.counts.toarray())
    (tmp_path / "bad.ldac").write_text("2 0:1 1:x\n")
    with pytest.raises(ValueError, match="line 1"):
        read_ldac(tmp_path / "bad.ldac")
    (tmp_path / "bad2.ldac").write_text("3 0:1 1:2\n")
    with pytest.raises(ValueError, match="says 3 distinct words"):
        read_ldac(tmp_path / "bad2.ldac")
    (tmp_path / "bad3.ldac").write_text("1 7:1\n")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        read_ldac(tmp_path / "bad3.ldac", ["a", "b"])
    (tmp_path / "bad4.ldac").write_text("1 0:99999999999999999999999\n")
    with pytest.raises(ValueError, match="line 1: a word id or count above 2\\*\\*31 - 1"):
        read_ldac(tmp_path / "bad4.ldac")
    # The Reuters loader takes the folder or its .ldac file, and names what is missing.
    (tmp_path / "r").mkdir()
    write_ldac(c, tmp_path / "r" / "reuters.ldac", tmp_path / "r" / "reuters.tokens")
    for where in (tmp_path / "r", tmp_path / "r" / "reuters.ldac"):
        corpus, titles = load_reuters(where)
        assert corpus.vocabulary == ["x", "y", "z"] and titles == ["0", "1", "2"]
    with pytest.raises(FileNotFoundError, match="no reuters.ldac in"):
        load_reuters(tmp_path / "docs_missing")


def test_folder_and_csv_sources(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "b.txt").write_text("second text")
    (tmp_path / "docs" / "a.txt").write_text("first text")
    texts, names = read_text_folder(tmp_path / "docs")
    assert names == ["a.txt", "b.txt"] and texts[0] == "first text"
    (tmp_path / "t.csv").write_text("id,body\n1,hello world\n2,\n")
    assert read_text_csv(tmp_path / "t.csv", "body") == ["hello world", ""]
    with pytest.raises(ValueError, match="no column 'text'"):
        read_text_csv(tmp_path / "t.csv", "text")


def test_npmi_and_diversity_against_hand_computed_values():
    # 4 documents; words 0 and 1 always together, word 2 with 0 once, word 3 never with 0.
    presence = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 1], [0, 0, 1, 1]])
    scores = npmi_coherence([[0, 1], [0, 3], [0, 2]], presence)
    assert scores[0] == pytest.approx(1.0)  # P(0,1) = P(0) = P(1) = 1/2
    assert scores[1] == pytest.approx(-1.0)  # never co-occur
    p02, p0, p2 = 0.25, 0.5, 0.5
    assert scores[2] == pytest.approx(np.log(p02 / (p0 * p2)) / -np.log(p02))
    assert topic_diversity([[0, 1, 2], [2, 3, 4]]) == pytest.approx(5 / 6)
    for ids in ([[0, 4]], [[0, -1]]):  # not wrapped round, not an IndexError
        with pytest.raises(ValueError, match=r"topic 0's word ids \[-?\d\] are not column indices of the 4-word"):
            npmi_coherence(ids, presence)


def test_pipeline_settings_errors_name_the_problem():
    with pytest.raises(ValueError, match="not a valid regular expression"):
        build_corpus(["a b", "c d"], token_pattern="(")
    with pytest.raises(ValueError, match="could not build the document-term matrix.*min_df"):
        build_corpus(["alpha beta gamma", "gamma delta epsilon"], min_df="a")
    with pytest.raises(TypeError, match="not one string"):
        build_corpus(["alpha beta"], vocabulary="alphabet")
    with pytest.raises(TypeError, match="not one string"):
        corpus_from_counts(np.ones((2, 3), int), vocabulary="abc")
    corpus = corpus_from_counts(np.ones((4, 3), int))
    with pytest.raises(ValueError, match=r"document positions in 0..3"):
        corpus.subset([5])
    assert corpus.subset([0, 2]).num_docs == 2
    with pytest.raises(ValueError, match="vocabulary is empty after filtering"):
        build_corpus(["apple banana"] * 40 + ["apple cherry"] * 40, max_df=0.3)
