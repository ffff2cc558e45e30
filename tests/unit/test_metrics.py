"""Causal-LM metrics against hand computations on a stub model with fixed logits."""

import math
from types import SimpleNamespace

import pytest
import torch

from fedpeft.evaluation.metrics import evaluate_causal_lm
from fedpeft.tensors.batching import TokenizedExample

VOCAB, FAVOURITE, EOS, PAD = 6, 3, 2, 0


class AlwaysThree(torch.nn.Module):
    """Predicts token 3 with logit 5 (all others 0) at every position."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None):
        logits = torch.zeros(*input_ids.shape, VOCAB)
        logits[..., FAVOURITE] = 5.0
        return SimpleNamespace(logits=logits)


P_FAV = math.exp(5) / (math.exp(5) + VOCAB - 1)
P_OTHER = 1 / (math.exp(5) + VOCAB - 1)


def test_loss_accuracy_and_unscored_special_tokens_by_hand():
    # Prompt [1], response targets 3, 3, 4, EOS; a second example with response 3, EOS.
    examples = [TokenizedExample((1, 3, 3, 4, EOS), prompt_len=1), TokenizedExample((1, 3, EOS), prompt_len=1)]
    scored = evaluate_causal_lm(AlwaysThree(), examples, batch_size=1, pad_id=PAD)
    # 6 targets: four are 3 or 4 or EOS... exactly: 3, 3, 4, EOS, 3, EOS -> three correct.
    expected_loss = (3 * -math.log(P_FAV) + 3 * -math.log(P_OTHER)) / 6
    assert scored["tokens"] == 6
    assert scored["token_accuracy"] == pytest.approx(3 / 6)
    assert scored["loss"] == pytest.approx(expected_loss, rel=1e-6)
    assert scored["perplexity"] == pytest.approx(math.exp(expected_loss), rel=1e-6)

    unscored = evaluate_causal_lm(AlwaysThree(), examples, batch_size=2, pad_id=PAD, unscored_token_ids=[EOS, PAD])
    assert unscored["tokens"] == 4
    assert unscored["token_accuracy"] == pytest.approx(3 / 4)
    assert unscored["loss"] == pytest.approx((3 * -math.log(P_FAV) - math.log(P_OTHER)) / 4, rel=1e-6)


def test_prompt_tokens_are_never_scored():
    a = evaluate_causal_lm(AlwaysThree(), [TokenizedExample((1, 4, 4, 3), prompt_len=3)], 1, PAD)
    assert a["tokens"] == 1 and a["token_accuracy"] == 1.0


@pytest.mark.parametrize("num_labels", [2, 3])
def test_classification_scores_match_sklearn(num_labels):
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    from fedpeft.evaluation.metrics import classification_scores

    gen = torch.Generator().manual_seed(num_labels)
    labels = torch.randint(0, num_labels, (200,), generator=gen).tolist()
    predictions = [t if torch.rand(1, generator=gen) < 0.6 else (t + 1) % num_labels for t in labels]
    ours = classification_scores(labels, predictions, num_labels)
    average = "binary" if num_labels == 2 else "macro"
    assert ours["accuracy"] == pytest.approx(accuracy_score(labels, predictions))
    assert ours["f1"] == pytest.approx(f1_score(labels, predictions, average=average))
    assert ours["mcc"] == pytest.approx(matthews_corrcoef(labels, predictions))


def test_degenerate_predictions_give_zero_mcc_like_sklearn():
    from fedpeft.evaluation.metrics import classification_scores

    scores = classification_scores([0, 1, 1, 0], [1, 1, 1, 1], 2)
    assert scores["mcc"] == 0.0 and scores["accuracy"] == 0.5 and scores["f1"] == pytest.approx(2 / 3)


def test_mean_reciprocal_rank_by_hand():
    from fedpeft.evaluation.metrics import mean_reciprocal_rank

    similarity = torch.tensor(
        [
            [0.9, 0.1, 0.2],  # correct first: 1
            [0.8, 0.5, 0.1],  # correct second: 1/2
            [0.7, 0.6, 0.3],  # correct third: 1/3
        ]
    )
    assert mean_reciprocal_rank(similarity) == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
    assert mean_reciprocal_rank(torch.ones(2, 2)) == pytest.approx(0.5)  # ties count against
    # Distractor columns after the queries' own codes: query 0 now has one distractor above it.
    with_distractors = torch.cat([similarity, torch.tensor([[0.95], [0.0], [0.0]])], dim=1)
    assert mean_reciprocal_rank(with_distractors) == pytest.approx((1 / 2 + 1 / 2 + 1 / 3) / 3)
