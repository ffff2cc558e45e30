"""``fedpeft serve``: the OpenAI-compatible API driven by the official ``openai`` client against a real uvicorn
server on 127.0.0.1 (started per module, stopped at teardown).

Greedy answers are compared with transformers' own ``model.generate`` on one unpadded prompt under the same
adapter, a path the server does not take (it batches, left-pads and stops rows itself). The runs train hard
enough (lr 0.05, 6 steps) that ``base`` and the adapters answer differently, so a wrong adapter shows.
"""

from __future__ import annotations

import dataclasses
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import jinja2
import openai
import pytest
import torch
from typer.testing import CliRunner

import fedpeft.cli.serve  # noqa: F401  (registers the command)
from fedpeft.cli import app
from fedpeft.cli.serve import vllm_chat_template
from fedpeft.config import load_config
from fedpeft.experiment.run import run_experiment
from fedpeft.serving.adapters import ServedRun, load_run
from fedpeft.serving.api import Message, make_app, render_chat, serving
from tests.integration.conftest import MICRO

KEY = "test-key"
TRAIN = ["fl.rounds=1", "train.lr=0.05", "train.max_steps=6", "eval.every=0"]
PROMPTS = ["def add(a, b):", "Write a function that adds two numbers.", "import os\n\nclass Foo:", "x = 1"]


def build(tmp_path_factory: pytest.TempPathFactory, *overrides: str) -> ServedRun:
    out = tmp_path_factory.mktemp("serve-runs")
    run_dir, _ = run_experiment(load_config("default", [*MICRO, *TRAIN, *overrides, f"output.dir={out}"]), quiet=True)
    return load_run(run_dir, "cpu")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> ServedRun:
    return build(tmp_path_factory)


@pytest.fixture(scope="module")
def server(run: ServedRun):
    app = make_app(run, KEY)
    with serving(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server[0]}/v1", api_key=KEY, max_retries=0, timeout=120)


def reference(run: ServedRun, name: str, prompt: str, new_tokens: int) -> str:
    """Greedy continuation of ``prompt`` by transformers' generate, one unpadded prompt, adapter ``name``."""
    tok = run.tokenizer
    ids = torch.tensor([[tok.bos_token_id, *tok(prompt, add_special_tokens=False)["input_ids"]]])
    with run.use(name) as model, torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
        )
    return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def test_lists_every_adapter_and_base(client: openai.OpenAI):
    assert [m.id for m in client.models.list()] == ["base", "global"]
    assert client.models.retrieve("global").id == "global"


@pytest.mark.parametrize("name", ["global", "base"])
def test_greedy_completion_equals_transformers_generate(client: openai.OpenAI, run: ServedRun, name: str):
    for prompt in PROMPTS[:2]:
        got = client.completions.create(model=name, prompt=prompt, max_tokens=12, temperature=0)
        (choice,) = got.choices
        assert choice.text == reference(run, name, prompt, 12)
        assert got.usage.prompt_tokens == 1 + len(run.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        assert got.usage.completion_tokens <= 12
        assert got.usage.total_tokens == got.usage.prompt_tokens + got.usage.completion_tokens
        assert choice.finish_reason in ("stop", "length")


def test_base_and_adapter_answer_differently(client: openai.OpenAI, run: ServedRun):
    answers = {
        name: [
            client.completions.create(model=name, prompt=p, max_tokens=12, temperature=0).choices[0].text
            for p in PROMPTS
        ]
        for name in run.names
    }
    assert answers["base"] != answers["global"], answers


def test_stop_sequence_cuts_the_completion(client: openai.OpenAI, run: ServedRun):
    full = reference(run, "global", PROMPTS[0], 16)
    stop = full[4:7]
    assert stop.strip(), f"the greedy answer {full!r} has no usable stop sequence"
    got = client.completions.create(model="global", prompt=PROMPTS[0], max_tokens=16, temperature=0, stop=[stop])
    assert got.choices[0].text == full[: full.index(stop)]
    assert got.choices[0].finish_reason == "stop"


def test_streamed_chat_joins_to_the_answer(client: openai.OpenAI, run: ServedRun):
    messages = [{"role": "user", "content": PROMPTS[1]}]
    whole = client.chat.completions.create(model="global", messages=messages, max_tokens=20, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model="global",
            messages=messages,
            max_tokens=20,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert text == reference(run, "global", run.format_prompt(PROMPTS[1]), 20)
    finished = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finished == [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    # The instruction run's template was applied: the prompt is the formatted one.
    assert whole.usage.prompt_tokens == 1 + len(run.tokenizer(run.format_prompt(PROMPTS[1]))["input_ids"])


def test_streamed_completion_with_stop_joins_to_the_answer(client: openai.OpenAI, run: ServedRun):
    full = reference(run, "base", PROMPTS[2], 16)
    stop = full[5:8]
    pieces = client.completions.create(
        model="base", prompt=PROMPTS[2], max_tokens=16, temperature=0, stop=stop, stream=True
    )
    assert "".join(c.choices[0].text for c in pieces) == full[: full.index(stop)]


def test_sampling_with_a_seed_is_reproducible(client: openai.OpenAI):
    def sample() -> list[str]:
        got = client.completions.create(model="global", prompt=PROMPTS[0], max_tokens=10, n=3, seed=7, temperature=1)
        assert [c.index for c in got.choices] == [0, 1, 2]
        return [c.text for c in got.choices]

    first = sample()
    assert sample() == first
    assert len(set(first)) > 1, "three samples at temperature 1 were identical"


def test_unknown_model_is_not_found(client: openai.OpenAI):
    with pytest.raises(openai.NotFoundError) as caught:
        client.completions.create(model="client-9", prompt="x", max_tokens=2)
    assert caught.value.code == "model_not_found"
    assert "base, global" in caught.value.message


def test_wrong_or_missing_key_is_refused(server):
    url = server[0]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
    bare = httpx.post(f"{url}/v1/completions", json={"model": "global", "prompt": "x"})
    assert bare.status_code == 401
    assert bare.json()["error"]["code"] == "invalid_api_key"


def post(url: str, headers: dict[str, str] | None = None, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {KEY}", **(headers or {})}
    return httpx.post(f"{url}/v1/completions", headers=headers, timeout=60, **kwargs)


def test_malformed_json_is_a_400_with_an_error_body(server):
    got = httpx.post(
        f"{server[0]}/v1/chat/completions",
        content=b'{"model": "global", "messages": [',
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    assert got.status_code == 400
    error = got.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_json"
    assert "malformed JSON" in error["message"]


def test_unknown_and_bad_parameters_are_400(client: openai.OpenAI, server):
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="global", prompt="x", max_tokens=2, extra_body={"top_k_typo": 3})
    assert caught.value.code == "unknown_parameter" and caught.value.param == "top_k_typo"
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="global", prompt="x", temperature=-1)
    assert caught.value.param == "temperature"
    got = post(server[0], json={"model": "global"})
    assert got.status_code == 400 and got.json()["error"]["param"] == "prompt"


def test_prompt_over_the_context_is_400(client: openai.OpenAI, run: ServedRun):
    limit = run.model.config.max_position_embeddings
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="global", prompt="x " * limit, max_tokens=2)
    assert caught.value.code == "context_length_exceeded" and str(limit) in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="global", prompt="x", max_tokens=limit)
    assert caught.value.param == "max_tokens"


def test_server_keeps_serving_after_errors(client: openai.OpenAI, server, run: ServedRun):
    for bad in (b"{", b"[]", b'"x"', b'{"prompt": 5}'):
        assert post(server[0], content=bad, headers={"Content-Type": "application/json"}).status_code == 400
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    got = client.completions.create(model="global", prompt=PROMPTS[3], max_tokens=6, temperature=0)
    assert got.choices[0].text == reference(run, "global", PROMPTS[3], 6)


def test_concurrent_requests_are_batched_and_answered_correctly(client: openai.OpenAI, run: ServedRun, server):
    batcher = server[1].state.batcher
    jobs = [(PROMPTS[i % len(PROMPTS)], 4 + i) for i in range(8)]  # each its own max_tokens
    expected = [reference(run, "global", prompt, tokens) for prompt, tokens in jobs]
    answers: list[str | None] = [None] * len(jobs)
    start = threading.Barrier(len(jobs))

    def ask(i: int) -> None:
        prompt, tokens = jobs[i]
        start.wait(timeout=30)
        answers[i] = (
            client.completions.create(model="global", prompt=prompt, max_tokens=tokens, temperature=0).choices[0].text
        )

    before = batcher.batches
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert answers == expected
    batches = list(batcher.history)[-(batcher.batches - before) :]
    assert sum(b.requests for b in batches) == len(jobs)
    assert len(batches) < len(jobs), f"8 concurrent requests ran in {len(batches)} batches: {batches}"
    assert max(b.requests for b in batches) > 1
    stats = httpx.get(f"{server[0]}/stats", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert stats["batches"] == batcher.batches and stats["recent_sizes"][-len(batches) :] == [
        b.requests for b in batches
    ]


@pytest.fixture(scope="module")
def personal(tmp_path_factory: pytest.TempPathFactory) -> ServedRun:
    return build(tmp_path_factory, "fl.strategy=local")


def test_personalised_run_serves_each_client(personal: ServedRun):
    with serving(make_app(personal, None)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        assert [m.id for m in client.models.list()] == ["base", "client-0", "client-1"]
        answers = {}
        for name in personal.names:
            got = client.completions.create(model=name, prompt=PROMPTS[:2], max_tokens=10, temperature=0)
            answers[name] = [c.text for c in got.choices]
            assert answers[name] == [reference(personal, name, p, 10) for p in PROMPTS[:2]]
        assert answers["client-0"] != answers["client-1"] or answers["client-0"] != answers["base"], answers
        unnamed = httpx.post(f"{url}/v1/completions", json={"prompt": PROMPTS[0], "max_tokens": 3}, timeout=60)
        assert unnamed.json()["model"] == personal.default == "client-0"


@pytest.mark.parametrize("task", ["instruction", "completion"])
def test_vllm_chat_template_renders_as_the_server(run: ServedRun, task: str):
    data = run.config.data.model_copy(update={"task": task})
    run = dataclasses.replace(run, config=run.config.model_copy(update={"data": data}))
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Add 2 and 3."},
        {"role": "assistant", "content": "5"},
        {"role": "user", "content": "And 4?"},
    ]
    ours, _ = render_chat(run, [Message(**m) for m in conversation])
    theirs = jinja2.Environment().from_string(vllm_chat_template(task, run.config.data.template))
    assert theirs.render(messages=conversation) == ours


def invoke(*args: str):
    return CliRunner().invoke(app, ["serve", *args])


def test_cli_vllm_dry_run_names_every_adapter(personal: ServedRun):
    got = invoke(str(personal.run_dir), "--engine", "vllm", "--dry-run", "--port", "8123", "--api-key", "k")
    assert got.exit_code == 0, got.output
    line = got.output.strip()
    assert line.startswith("vllm serve ") and "--enable-lora" in line and "--served-model-name base" in line
    for name in ("client-0", "client-1"):
        assert f"{name}={personal.run_dir.resolve() / 'adapter' / name}" in line
    assert "--port 8123" in line and "--api-key k" in line and "--max-lora-rank 8" in line


def test_cli_vllm_without_vllm_is_a_clear_error(run: ServedRun):
    try:
        import vllm  # noqa: F401
    except ImportError:
        got = invoke(str(run.run_dir), "--engine", "vllm")
        assert got.exit_code == 2 and "needs vLLM" in got.output and "GPU" in got.output
    else:
        pytest.skip("vllm is installed here")


def test_cli_port_in_use_and_bad_run_are_clear_errors(run: ServedRun, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        got = invoke(str(run.run_dir), "--port", str(taken.getsockname()[1]))
    assert got.exit_code == 2 and "in use" in got.output and "--port" in got.output
    got = invoke(str(tmp_path / "missing"))
    assert got.exit_code == 2 and "no such run directory" in got.output
    got = invoke(str(run.run_dir), "--engine", "tgi")
    assert got.exit_code == 2 and "transformers, vllm" in got.output


def test_cli_serves_until_interrupted(personal: ServedRun):
    """The real entry point in its own process: up, answering with the key, stopped by Ctrl-C (SIGINT)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = "import sys, fedpeft.cli.serve; from fedpeft.cli import app; sys.argv[0] = 'fedpeft'; app()"
    args = [sys.executable, "-c", code, "serve", str(personal.run_dir), "--port", str(port), "--api-key", KEY]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "fedpeft serve did not answer within 120 s"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0, timeout=60)
        assert [m.id for m in client.models.list()] == ["base", "client-0", "client-1"]
        got = client.completions.create(model="client-1", prompt=PROMPTS[0], max_tokens=5, temperature=0)
        assert got.choices[0].text == reference(personal, "client-1", PROMPTS[0], 5)
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    # uvicorn shuts down gracefully, then re-raises the SIGINT: 130 as a shell reports it (0 where SIGINT is ignored).
    assert proc.returncode in (0, 130), out
    assert f"at http://127.0.0.1:{port}/v1" in out and "Application shutdown complete" in out
    assert "Traceback" not in out, out
