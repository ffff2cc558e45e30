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


def test_seq2seq_batches_feed_the_prompt_to_the_encoder_and_the_response_to_the_labels():
    from fedpeft.tensors.batching import collate_seq2seq

    batch = collate_seq2seq([TokenizedExample((5, 6, 7, 8), 2), TokenizedExample((1, 2, 3, 4, 9), 3)], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 0], [1, 2, 3]]
    assert batch["attention_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]
    assert batch["labels"].tolist() == [[7, 8], [4, 9]]
    short = collate_seq2seq([TokenizedExample((5, 6, 7), 2), TokenizedExample((1, 2, 3, 4), 1)], pad_id=0)
    assert short["labels"].tolist() == [[7, IGNORE_INDEX, IGNORE_INDEX], [2, 3, 4]]


def test_token_loss_matches_the_models_own_loss_for_causal_and_seq2seq_heads():
    """Our alignment of logits and targets against transformers' own label shifting (mean loss)."""
    from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

    from fedpeft.fl.client_round import OBJECTIVES

    torch.manual_seed(0)
    examples = [TokenizedExample((1, 5, 6, 7, 8, 2), 2), TokenizedExample((1, 9, 4, 3, 2), 3)]
    llama = LlamaForCausalLM(
        LlamaConfig(vocab_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    ).eval()
    t5 = T5ForConditionalGeneration(
        T5Config(vocab_size=16, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2, decoder_start_token_id=0)
    ).eval()
    for model, head in ((llama, "causal_lm"), (t5, "seq2seq_lm")):
        objective = OBJECTIVES[head]
        batch = objective.collate(examples, 0, True)
        ours = objective.loss_sum(model, batch) / objective.count(batch)
        assert objective.count(batch) == 6  # 4 + 2 response tokens, EOS included
        theirs = model(**batch).loss
        torch.testing.assert_close(ours, theirs)


def test_pack_rows_is_first_fit_decreasing_within_capacity():
    from fedpeft.tensors.batching import pack_rows

    lengths = [3, 7, 2, 5, 4, 9]
    rows = pack_rows(lengths, capacity=10)
    # By hand, longest first: 9 -> row A (room 1); 7 -> row B (room 3); 5 -> row C (room 5); 4 -> first row
    # with room is C (room 1); 3 -> B (room 0); 2 -> rooms are 1, 0, 1 -> row D.
    assert rows == [[5], [1, 0], [3, 4], [2]]
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 10 for row in rows)
    assert pack_rows([12, 1], capacity=10) == [[0], [1]]  # too long for any row: a row of its own


def test_packed_batches_restart_positions_and_score_the_same_tokens():
    from fedpeft.tensors.batching import collate_packed_causal_lm

    ex = [TokenizedExample((5, 6, 7, 8), prompt_len=2), TokenizedExample((9, 10, 11), prompt_len=1)]
    m = IGNORE_INDEX
    for mask_prompt in (True, False):
        packed = collate_packed_causal_lm(ex, pad_id=0, mask_prompt=mask_prompt, capacity=8)
        assert "attention_mask" not in packed
        assert packed["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10, 11]]
        assert packed["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2]]
        # The second document's first token would be predicted from the first's last: never a target.
        first = [m, m, 7, 8] if mask_prompt else [m, 6, 7, 8]
        assert packed["labels"].tolist() == [first + [m, 10, 11]]
        padded = collate_causal_lm(ex, pad_id=0, mask_prompt=mask_prompt)
        assert count_target_tokens(packed["labels"]) == count_target_tokens(padded["labels"])
    two_rows = collate_packed_causal_lm(ex, pad_id=0, mask_prompt=True, capacity=5)
    assert two_rows["input_ids"].tolist() == [[5, 6, 7, 8], [9, 10, 11, 0]]
    assert two_rows["position_ids"].tolist() == [[0, 1, 2, 3], [0, 1, 2, 0]]  # padding: its own document
    assert two_rows["labels"].tolist() == [[m, m, 7, 8], [m, 10, 11, m]]
