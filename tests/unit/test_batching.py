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
