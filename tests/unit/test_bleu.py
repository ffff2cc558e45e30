"""Smoothed BLEU-4 on hand-worked examples."""

import math

import pytest

from fedpeft.evaluation.bleu import bleu_tokens, corpus_smoothed_bleu, smoothed_sentence_bleu


def test_identical_sentences_score_one():
    assert smoothed_sentence_bleu("Return the sum of a and b.", "return the sum of a and b .") == pytest.approx(1.0)


def test_short_candidate_pays_the_brevity_penalty_only():
    # All n-gram precisions are 1 (4-grams: 0/0, smoothed to 1/1); r = 6, c = 3 -> exp(1 - 7/4).
    assert smoothed_sentence_bleu("the cat sat", "the cat sat on the mat") == pytest.approx(math.exp(-0.75))


def test_partial_overlap_by_hand():
    # 1-grams 2/4; 2-grams (0+1)/(3+1); 3-grams (0+1)/(2+1); 4-grams (0+1)/(1+1); equal lengths.
    expected = (0.5 * 0.25 * (1 / 3) * 0.5) ** 0.25
    assert smoothed_sentence_bleu("a b c d", "a x c y") == pytest.approx(expected)


def test_unigrams_are_not_smoothed_and_clipping_applies():
    # No unigram match: log(0 + float_min) / 4 ~ -177, so the score is ~1e-77, not smoothed away.
    assert smoothed_sentence_bleu("zzz", "a b c") < 1e-70
    # "the the the" vs "the cat": clipped unigram matches 1/3.
    clipped = smoothed_sentence_bleu("the the the", "the cat")
    assert clipped == pytest.approx(((1 / 3) * (1 / 3) * (1 / 2) * 1) ** 0.25)


def test_corpus_score_is_the_mean_times_100_and_tokenizes_punctuation():
    assert bleu_tokens("Parse a URL, e.g. x.") == ["parse", "a", "url", ",", "e", ".", "g", ".", "x", "."]
    score = corpus_smoothed_bleu(["a b c d", "the cat sat"], ["a x c y", "the cat sat on the mat"])
    assert score == pytest.approx(50 * ((0.5 * 0.25 / 3 * 0.5) ** 0.25 + math.exp(-0.75)))
    with pytest.raises(ValueError, match="equally many"):
        corpus_smoothed_bleu(["a"], [])
