"""Batched completion sampling (fedpeft.models.generate) against plain one-prompt ``model.generate`` calls.

Tiny random Llama and T5 models share the shipped ``builtin:small`` tokenizer (byte-level BPE, distinct pad
and EOS), so every test runs on the CPU in well under a second per model call.
"""

from __future__ import annotations

import pytest
import torch

from fedpeft.models.generate import generate_completions, make_ask

PROMPTS = [
    "def add(a, b):\n    return",
    'import os\n\n\nclass Config:\n    """Settings read from the environment."""\n\n    def __init__(self, name):\n',
    "x =",
    "for i in range(10):\n    print(i",
    "# sum of squares\ndef f(xs):\n    total = 0\n    for x in xs:\n        total +=",
]
NEW = 10


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from fedpeft.models.builtin import pretrained_dir

    return AutoTokenizer.from_pretrained(pretrained_dir("small"))


def tiny_llama(tokenizer, dropout: float = 0.0):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        attention_dropout=dropout,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def llama(tokenizer):
    return tiny_llama(tokenizer)


def reference_greedy(model, tokenizer, prompt: str, max_new_tokens: int = NEW) -> tuple[str, int]:
    """(continuation, tokens generated) of one prompt by plain ``model.generate``: no padding, no batching."""
    ids = torch.tensor([[tokenizer.bos_token_id, *tokenizer(prompt, add_special_tokens=False)["input_ids"]]])
    with torch.no_grad():
        out = model.eval().generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    new = out[0] if model.config.is_encoder_decoder else out[0, ids.shape[1] :]
    if model.config.is_encoder_decoder:
        new = new[1:]  # the decoder start token
    return tokenizer.decode(new, skip_special_tokens=True), len(new)


def test_batched_left_padded_greedy_equals_one_prompt_at_a_time(llama, tokenizer):
    lengths = {len(tokenizer(p)["input_ids"]) for p in PROMPTS}
    assert len(lengths) == len(PROMPTS)  # every batch mixes lengths, so padding is exercised
    expected = [reference_greedy(llama, tokenizer, p)[0] for p in PROMPTS]
    assert len(set(expected)) == len(PROMPTS)  # order mix-ups would show
    for batch_size in (2, 8):  # several length-sorted batches, and all prompts in one
        got = generate_completions(llama, tokenizer, PROMPTS, 1, 0.0, [], NEW, batch_size=batch_size)
        assert got == [[e] for e in expected]


def test_greedy_with_n_repeats_one_decode(llama, tokenizer):
    one = generate_completions(llama, tokenizer, PROMPTS[:3], 1, 0.0, [], NEW)
    three = generate_completions(llama, tokenizer, PROMPTS[:3], 3, 0.0, [], NEW, batch_size=2)
    assert three == [[c[0]] * 3 for c in one]


def test_stop_sequences_cut_and_end_generation(llama, tokenizer):
    free = [reference_greedy(llama, tokenizer, p)[0] for p in PROMPTS[:2]]
    # A multi-token stop sequence taken from the middle of the first prompt's free continuation.
    stop = free[0][6:12]
    assert stop and stop not in free[1] and free[0].find(stop) >= 1
    ask = make_ask(llama, tokenizer, max_new_tokens=NEW)
    unstopped = make_ask(llama, tokenizer, max_new_tokens=NEW)
    got = ask(PROMPTS[:2], 1, 0.0, [stop, "\x00never"])
    unstopped(PROMPTS[:2], 1, 0.0, [])
    assert got == [[free[0][: free[0].find(stop)]], [free[1]]]
    assert ask.generated_tokens < unstopped.generated_tokens  # the first row stopped early, the other did not


def test_generated_tokens_and_time_are_recorded(llama, tokenizer):
    ask = make_ask(llama, tokenizer, max_new_tokens=NEW, batch_size=3)
    ask(PROMPTS, 1, 0.0, [])
    assert ask.generated_tokens == sum(reference_greedy(llama, tokenizer, p)[1] for p in PROMPTS)
    assert ask.seconds > 0 and ask.calls == 1
    ask(PROMPTS, 2, 0.0, [])  # greedy: each prompt decoded once
    assert ask.generated_tokens == 2 * sum(reference_greedy(llama, tokenizer, p)[1] for p in PROMPTS)
    assert ask.calls == 2


def test_sampling_is_reproducible_per_seed_and_leaves_the_global_rng_alone(llama, tokenizer):
    state = torch.get_rng_state()
    first = generate_completions(llama, tokenizer, PROMPTS[:3], 4, 1.0, [], NEW, batch_size=8, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    again = generate_completions(llama, tokenizer, PROMPTS[:3], 4, 1.0, [], NEW, batch_size=8, seed=3)
    other = generate_completions(llama, tokenizer, PROMPTS[:3], 4, 1.0, [], NEW, batch_size=8, seed=4)
    assert [len(c) for c in first] == [4, 4, 4]
    assert first == again
    assert first != other
    assert all(len(set(c)) > 1 for c in first)  # the n samples of a prompt are independent draws


def test_samples_are_continuations_of_their_own_prompt(llama, tokenizer):
    """Near-zero temperature samples like greedy: each prompt's samples land on that prompt's greedy text."""
    cold = generate_completions(llama, tokenizer, PROMPTS[:3], 2, 1e-4, [], NEW, batch_size=4, seed=0)
    assert cold == [[reference_greedy(llama, tokenizer, p)[0]] * 2 for p in PROMPTS[:3]]


def test_model_mode_and_padding_side_are_restored(tokenizer):
    model = tiny_llama(tokenizer, dropout=0.5).train()
    expected = [[reference_greedy(model, tokenizer, p)[0]] for p in PROMPTS[:3]]
    model.train()
    for side in ("right", "left"):
        tokenizer.padding_side = side
        try:
            got = generate_completions(model, tokenizer, PROMPTS[:3], 1, 0.0, [], NEW)
            assert tokenizer.padding_side == side
        finally:
            tokenizer.padding_side = "right"
        assert got == expected  # dropout was off while generating
        assert model.training


def test_encoder_decoder_gives_the_continuation(tokenizer):
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=16,
        d_ff=64,
        num_layers=2,
        num_heads=2,
        decoder_start_token_id=tokenizer.pad_token_id,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        initializer_factor=5.0,  # at 1.0 a 32-wide random T5 says the same words whatever its input
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        t5 = T5ForConditionalGeneration(config).eval()
    expected = [reference_greedy(t5, tokenizer, p)[0] for p in PROMPTS]
    assert len(set(expected)) > 1
    assert generate_completions(t5, tokenizer, PROMPTS, 2, 0.0, [], NEW, batch_size=3) == [[e, e] for e in expected]
    sampled = generate_completions(t5, tokenizer, PROMPTS[:2], 2, 1.0, [], NEW, seed=0)
    assert sampled == generate_completions(t5, tokenizer, PROMPTS[:2], 2, 1.0, [], NEW, seed=0)
    assert [len(c) for c in sampled] == [2, 2]


def metaspace_tokenizer():
    """A SentencePiece-style tokenizer (``▁`` marks a space; a piece decoded alone loses its leading space)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from fedpeft.evaluation.suites.humaneval import humaneval_rows

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    texts = [r["prompt"] + r["canonical_solution"] for r in humaneval_rows()[:40]]
    special = ["<unk>", "<pad>", "<s>", "</s>"]
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=special, show_progress=False))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )


def test_completions_keep_the_leading_space_a_piece_loses_when_decoded_alone():
    tokenizer = metaspace_tokenizer()
    model = tiny_llama(tokenizer)
    got = generate_completions(model, tokenizer, PROMPTS, 1, 0.0, [], NEW)
    starts_with_space = 0
    for prompt, [completion] in zip(PROMPTS, got, strict=True):
        ids = torch.tensor([[tokenizer.bos_token_id, *tokenizer(prompt, add_special_tokens=False)["input_ids"]]])
        with torch.no_grad():
            out = model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW, do_sample=False
            )
        # The prompt's text followed by the completion is the text of all the tokens.
        assert tokenizer.decode(ids[0], skip_special_tokens=True) + completion == tokenizer.decode(
            out[0], skip_special_tokens=True
        )
        starts_with_space += completion.startswith(" ")
    assert starts_with_space > 0  # the case where decoding the new tokens alone would lose a space


def test_empty_prompt_list(llama, tokenizer):
    ask = make_ask(llama, tokenizer, max_new_tokens=NEW)
    assert ask([], 3, 0.5, ["\n"]) == []
    assert ask.generated_tokens == 0


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"n": 0}, "n=0"),
        ({"temperature": -0.1}, "temperature=-0.1"),
        ({"stop": ["\n", ""]}, "empty stop sequence"),
        ({"max_new_tokens": 0}, "max_new_tokens=0"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"top_p": 0.0}, "top_p=0.0"),
        ({"prompts": "def f():"}, "not one string"),
        ({"stop": "\n"}, "not one string"),
    ],
)
def test_bad_arguments_are_named(llama, tokenizer, change, named):
    args = {"prompts": PROMPTS[:1], "n": 1, "temperature": 0.0, "stop": [], "max_new_tokens": 4} | change
    with pytest.raises(ValueError, match=named):
        generate_completions(llama, tokenizer, **args)


def test_ask_runs_a_suite(llama, tokenizer):
    """make_ask's callable is what the suites take: a HumanEval run gets n samples per problem, judged."""
    from fedpeft.evaluation.sandbox import SandboxLimits
    from fedpeft.evaluation.suites.base import RunSettings, run_suite
    from fedpeft.evaluation.suites.humaneval import HumanEval

    ask = make_ask(llama, tokenizer, max_new_tokens=8)
    settings = RunSettings(limit=2, samples=2, temperature=0.8, ks=(1, 2), sandbox=SandboxLimits(timeout_s=5.0))
    result = run_suite(HumanEval(), ask, settings)
    assert result.metrics["samples"] == 4 and result.metrics["problems"] == 2
    assert [s.task_id for s in result.samples] == ["HumanEval/0", "HumanEval/0", "HumanEval/1", "HumanEval/1"]
    assert ask.calls == 1 and ask.generated_tokens > 0


def test_a_prompt_longer_than_the_context_keeps_its_end(tokenizer):
    """Prompt + new tokens past max_position_embeddings: the prompt is cut from the left (BOS kept), and the
    completion is plain generate's on exactly that cut prompt."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=48,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).eval()
    prompt = "def f(x):\n    return x + 1\n" * 20
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert len(ids) > 48
    cut = torch.tensor([[tokenizer.bos_token_id, *ids[-(48 - 8 - 1) :]]])
    with torch.no_grad():
        out = model.generate(
            input_ids=cut,
            attention_mask=torch.ones_like(cut),
            max_new_tokens=8,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    expected = tokenizer.decode(torch.cat([cut[0], out[0, cut.shape[1] :]]), skip_special_tokens=True)
    head = tokenizer.decode(cut[0], skip_special_tokens=True)
    (completion,) = generate_completions(model, tokenizer, [prompt, "def g():"], 1, 0.0, (), 8)[0]
    assert completion == expected[len(head) :]
    with pytest.raises(ValueError, match="max_new_tokens=48 leaves no room for a prompt in the model's context of 48"):
        generate_completions(model, tokenizer, [prompt], 1, 0.0, (), 48)
