"""``fedpeft.serving.sampling``'s settings, checks and stop-sequence handling, without a model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from fedpeft.errors import FedpeftError
from fedpeft.serving.adapters import ServingError
from fedpeft.serving.sampling import (
    SAMPLING_PARAMETERS,
    SamplingSettings,
    _held_back,
    _StopText,
    check_context,
    context_length,
    sampling_from,
)


def test_defaults_are_shepherds():
    s = SamplingSettings()
    assert (s.temperature, s.top_p, s.top_k, s.num_beams, s.max_new_tokens) == (0.1, 0.75, 40, 4, 128)
    assert s.stop == () and s.seed == 0 and not s.greedy
    assert SamplingSettings(temperature=0).greedy


def test_sampling_from_takes_known_names_and_keeps_defaults_for_none():
    s = sampling_from({"temperature": 0, "top_k": 5.0, "stop": "\n\n", "seed": None, "max_new_tokens": 7})
    assert s == SamplingSettings(temperature=0.0, top_k=5, stop=("\n\n",), max_new_tokens=7)
    assert isinstance(s.top_k, int) and isinstance(s.temperature, float)
    assert sampling_from({"stop": ["a", "b"]}).stop == ("a", "b")
    base = SamplingSettings(num_beams=1)
    assert sampling_from({"top_p": 0.5}, base=base) == SamplingSettings(num_beams=1, top_p=0.5)
    assert sampling_from({}) == SamplingSettings()


def test_unknown_parameters_are_listed_with_the_valid_ones():
    with pytest.raises(ServingError) as err:
        sampling_from({"temprature": 0.5, "top_p": 0.9, "beams": 2}, source="request body")
    message = str(err.value)
    assert message.startswith("request body: unknown sampling parameters 'beams', 'temprature'")
    assert f"valid: {', '.join(SAMPLING_PARAMETERS)}" in message
    assert isinstance(err.value, FedpeftError)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"temperature": -0.1}, "temperature=-0.1: must be a finite number >= 0"),
        ({"temperature": float("nan")}, "temperature=nan"),
        ({"top_p": 0}, "top_p=0.0: must be in (0, 1]"),
        ({"top_p": 1.01}, "top_p=1.01: must be in (0, 1]"),
        ({"top_k": -1}, "top_k=-1: must be >= 0"),
        ({"num_beams": 0}, "num_beams=0: must be >= 1"),
        ({"max_new_tokens": 0}, "max_new_tokens=0: must be >= 1"),
        ({"seed": -3}, "seed=-3: must be >= 0"),
        ({"stop": ["ok", ""]}, "stop=['ok', '']: must be non-empty strings"),
        ({"stop": 3}, "stop=3 must be a string or a list of strings"),
        ({"top_k": 2.5}, "top_k=2.5 must be an integer"),
        ({"num_beams": True}, "num_beams=True must be an integer"),
        ({"temperature": "hot"}, "temperature='hot' must be a number"),
    ],
)
def test_bad_values_name_the_parameter_and_the_valid_range(values, expected):
    with pytest.raises(ServingError) as err:
        sampling_from(values, source="request body")
    assert str(err.value).startswith("request body: ") and expected in str(err.value)


def test_settings_built_directly_are_checked_too():
    with pytest.raises(ServingError, match="num_beams=0"):
        SamplingSettings(num_beams=0)


def model_with(**config) -> SimpleNamespace:
    return SimpleNamespace(config=SimpleNamespace(**config))


def test_context_length_reads_the_usual_config_keys():
    assert context_length(model_with(max_position_embeddings=512)) == 512
    assert context_length(model_with(n_positions=1024)) == 1024
    assert context_length(model_with(hidden_size=8)) is None


def test_check_context_says_both_numbers():
    model = model_with(max_position_embeddings=512)
    check_context(model, None, list(range(384)), 128)
    with pytest.raises(ServingError, match="the prompt is 600 tokens, over the model's context of 512 tokens"):
        check_context(model, None, list(range(600)), 128)
    with pytest.raises(ServingError, match="the prompt is 512 tokens, over"):
        check_context(model, None, list(range(512)), 1)
    with pytest.raises(ServingError) as err:
        check_context(model, None, list(range(400)), 128)
    assert "400 tokens and max_new_tokens is 128: 528 tokens" in str(err.value)
    assert "set max_new_tokens to at most 112" in str(err.value)
    with pytest.raises(ServingError, match="the prompt is empty"):
        check_context(model, None, [], 8)
    check_context(model_with(), None, list(range(10_000)), 128)  # no known context: nothing to check


@pytest.mark.parametrize(
    ("text", "stop", "held"),
    [
        ("hello wor", ["world"], 3),
        ("hello", ["world"], 0),
        ("abc\n", ["\n\n"], 1),
        ("abc#", ["##", "#END"], 1),
        ("ab", ["abc"], 2),
        ("", ["x"], 0),
        ("anything", [], 0),
    ],
)
def test_held_back_is_the_longest_tail_that_starts_a_stop_sequence(text, stop, held):
    assert _held_back(text, stop) == held


class CharTokenizer:
    """One token per character (id = code point), as much of a tokenizer as ``_StopText`` uses."""

    def batch_decode(self, rows, skip_special_tokens: bool = True):
        return ["".join(map(chr, row)) for row in rows.tolist()]


def ids(*rows: str) -> torch.Tensor:
    return torch.tensor([[ord(c) for c in row] for row in rows])


def test_stop_text_is_stateless_and_ignores_the_prompt():
    stop = _StopText(CharTokenizer(), ["END"], start=4)
    scores = torch.zeros(1)
    assert stop(ids("ENDxab", "ENDxEN", "xxxEND"), scores).tolist() == [False, False, False]  # END in the prompt
    assert stop(ids("ENDxabEND", "ENDxENabc", "xxxxxENDx"), scores).tolist() == [True, False, True]
    # beam search passes other rows at the next step: a row that matched before does not stay matched
    assert stop(ids("ENDxabcde"), scores).tolist() == [False]


def test_stop_text_ends_every_row_once_cancelled():
    import threading

    cancel = threading.Event()
    stop = _StopText(CharTokenizer(), [], start=1, cancel=cancel)
    assert stop(ids("ab", "cd"), torch.zeros(1)).tolist() == [False, False]
    cancel.set()
    assert stop(ids("ab", "cd"), torch.zeros(1)).tolist() == [True, True]
