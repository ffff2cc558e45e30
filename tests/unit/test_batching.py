import torch

from fedpeft.tensors.batching import IGNORE_INDEX, TokenizedExample, collate_causal_lm, count_target_tokens


def test_collate_pads_right_and_masks_prompt_and_padding():
    ex = [TokenizedExample((5, 6, 7, 8), prompt_len=2), TokenizedExample((9, 10), prompt_len=1)]
    b = collate_causal_lm(ex, pad_id=0, mask_prompt=True)
    assert b["input_ids"].tolist() == [[5, 6, 7, 8], [9, 10, 0, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    m = IGNORE_INDEX
    assert b["labels"].tolist() == [[m, m, 7, 8], [m, 10, m, m]]
    assert count_target_tokens(b["labels"]) == 3


def test_train_on_inputs_keeps_prompt_labels():
    b = collate_causal_lm([TokenizedExample((5, 6, 7), prompt_len=2)], pad_id=0, mask_prompt=False)
    assert torch.equal(b["labels"], torch.tensor([[5, 6, 7]]))
    assert count_target_tokens(b["labels"]) == 2  # the first token is never a target


def test_query_code_pairs_split_at_the_prompt_boundary_and_mean_pool():
    from fedpeft.tensors.batching import collate_query_code, mean_pool

    b = collate_query_code(
        [TokenizedExample((1, 5, 6, 7, 2), prompt_len=2), TokenizedExample((1, 8, 9), prompt_len=1)], 0
    )
    assert b["query_ids"].tolist() == [[1, 5], [1, 0]] and b["query_mask"].tolist() == [[1, 1], [1, 0]]
    assert b["code_ids"].tolist() == [[6, 7, 2], [8, 9, 0]] and b["code_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    hidden = torch.tensor([[[3.0, 0.0], [1.0, 0.0], [100.0, 100.0]]])
    pooled = mean_pool(hidden, torch.tensor([[1, 1, 0]]))  # mean of the first two rows: (2, 0)
    assert torch.allclose(pooled, torch.tensor([[1.0, 0.0]]))
