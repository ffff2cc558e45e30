"""``fedpeft generate`` and ``fedpeft merge`` on real micro runs, checked against references fedpeft did not write.

- Merged models are compared with peft's own ``AutoPeftModelForCausalLM`` (the base the adapter names, with the
  adapter active): equal logits in float32, for a global run, a personalised run's client and an 8-bit run
  (merged into a dequantised copy, so its reference is the unquantised base plus the adapter).
- ``generate`` is compared with ``model.generate`` called directly on that peft model: greedy, beam search and
  seeded sampling give the same text.
- The runs train hard enough (lr 0.05, 6 steps) that the adapters move the logits well beyond the tolerance,
  which each test checks, so equality is not a base model compared with itself.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

import fedpeft.cli.use  # noqa: F401  (registers the commands)
from fedpeft.cli import app
from fedpeft.config import load_config
from fedpeft.data.tasks.common import format_prompt
from fedpeft.experiment.run import run_experiment
from fedpeft.serving.adapters import load_run
from fedpeft.serving.merge import MERGE_INFO_FILE, merge_run
from fedpeft.serving.sampling import SamplingSettings, generate, stream
from tests.integration.conftest import MICRO

TRAIN = ["fl.rounds=1", "train.lr=0.05", "train.max_steps=6", "eval.every=0"]
PROMPT = "Write a function that adds two numbers."
TEXTS = ["def add(a, b):\n    return a + b\n", "Sort a list of numbers.", "x = [i * i for i in range(10)]"]
MICRO_CONTEXT = 512  # builtin:micro's max_position_embeddings


def _run(tmp_path_factory: pytest.TempPathFactory, label: str, *overrides: str) -> Path:
    out = tmp_path_factory.mktemp(label)
    run_dir, _ = run_experiment(load_config("default", [*MICRO, *TRAIN, *overrides, f"output.dir={out}"]), quiet=True)
    return run_dir


@pytest.fixture(scope="module")
def global_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run(tmp_path_factory, "global-run")


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run(tmp_path_factory, "local-run", "fl.strategy=local")


def invoke(*args: str, stdin: str | None = None):
    return CliRunner().invoke(app, [str(a) for a in args], input=stdin)


def peft_reference(adapter: Path):
    """peft's own loading of an adapter directory onto the base it names, in float32 on the CPU."""
    from peft import AutoPeftModelForCausalLM

    return AutoPeftModelForCausalLM.from_pretrained(str(adapter), dtype=torch.float32).eval()


def logits(model, tokenizer, text: str) -> torch.Tensor:
    ids = torch.tensor([[tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]])
    with torch.no_grad():
        return model(input_ids=ids).logits[0]


def assert_same_logits(merged_dir: Path, adapter: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(merged_dir))
    reference = peft_reference(adapter)
    for text in TEXTS:
        want = logits(reference, tokenizer, text)
        with reference.disable_adapter():
            base = logits(reference, tokenizer, text)
        assert (want - base).abs().max() > 1e-2, (
            "the adapter hardly moves the logits: the comparison would prove nothing"
        )
        torch.testing.assert_close(logits(merged, tokenizer, text), want, atol=1e-5, rtol=1e-5)


def assert_standalone(merged_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    files = {p.name for p in merged_dir.iterdir()}
    assert not files & {"adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"}, files
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    model = AutoModelForCausalLM.from_pretrained(str(merged_dir))
    assert not any("lora" in name for name, _ in model.named_parameters())
    assert type(model).__module__.startswith("transformers.")


# ---- merge ----


def test_merged_global_adapter_has_the_peft_models_logits(global_run: Path, tmp_path: Path):
    out = tmp_path / "merged"
    result = invoke("merge", global_run, out)
    assert result.exit_code == 0, result.output
    assert f"merged global (lora) into {out}" in result.stdout
    assert_standalone(out)
    assert_same_logits(out, global_run / "adapter")
    info = json.loads((out / MERGE_INFO_FILE).read_text())
    assert info == {
        "run_dir": str(global_run.resolve()),
        "adapter": "global",
        "peft_method": "lora",
        "dtype": "float32",
        "dequantized_from": "none",
    }


def test_merged_client_adapter_is_that_clients(local_run: Path, tmp_path: Path):
    out = tmp_path / "client-1"
    result = invoke("merge", local_run, out, "--client", "1")
    assert result.exit_code == 0, result.output
    assert_standalone(out)
    assert_same_logits(out, local_run / "adapter" / "client-1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = AutoModelForCausalLM.from_pretrained(str(out))
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    other = peft_reference(local_run / "adapter" / "client-0")
    gap = (logits(merged, tokenizer, TEXTS[0]) - logits(other, tokenizer, TEXTS[0])).abs().max()
    assert gap > 1e-3, "client-1's merged model has client-0's logits"


def test_merge_in_bfloat16_writes_bfloat16_weights(global_run: Path, tmp_path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = merge_run(global_run, tmp_path / "bf16", dtype="bfloat16")
    model = AutoModelForCausalLM.from_pretrained(str(merged.out))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    tokenizer = AutoTokenizer.from_pretrained(str(merged.out))
    want = logits(peft_reference(global_run / "adapter"), tokenizer, TEXTS[0])
    torch.testing.assert_close(logits(model, tokenizer, TEXTS[0]).float(), want, atol=0.1, rtol=0.05)


@pytest.mark.slow  # 8-bit training on the CPU: ~45 s
def test_quantised_run_merges_into_a_dequantised_copy(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path):
    pytest.importorskip("bitsandbytes")
    run_dir = _run(tmp_path_factory, "8bit-run", "model.name=builtin:micro64", "model.quantization=8bit")
    merged = merge_run(run_dir, tmp_path / "merged")
    assert merged.dequantized_from == "8bit"
    config = json.loads((merged.out / "config.json").read_text())
    assert "quantization_config" not in config
    assert_standalone(merged.out)
    assert_same_logits(merged.out, run_dir / "adapter")


def test_merge_refuses_to_overwrite_and_force_replaces(global_run: Path, tmp_path: Path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = invoke("merge", global_run, out)
    assert result.exit_code == 2
    assert f"OUT {out} exists and is not empty" in result.stderr and "--force" in result.stderr
    assert (out / "notes.txt").read_text() == "mine"
    result = invoke("merge", global_run, out, "--force")
    assert result.exit_code == 0, result.output
    assert not (out / "notes.txt").exists() and (out / "config.json").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert invoke("merge", global_run, empty).exit_code == 0


def test_merge_force_never_deletes_the_run(global_run: Path):
    result = invoke("merge", global_run, global_run.parent, "--force")
    assert result.exit_code == 2
    assert "holds the run" in result.stderr
    assert (global_run / "adapter" / "adapter_config.json").is_file()


def test_merge_choosing_clients(global_run: Path, local_run: Path, tmp_path: Path):
    result = invoke("merge", local_run, tmp_path / "a")
    assert result.exit_code == 2
    assert (
        "personalised run" in result.stderr and "client-0, client-1" in result.stderr and "--client N" in result.stderr
    )
    result = invoke("merge", local_run, tmp_path / "b", "--client", "9")
    assert result.exit_code == 2 and "--client 9" in result.stderr and "client-0, client-1" in result.stderr
    result = invoke("merge", global_run, tmp_path / "c", "--client", "0")
    assert result.exit_code == 2 and "one global adapter" in result.stderr
    result = invoke("merge", global_run, tmp_path / "d", "--dtype", "int8")
    assert result.exit_code == 2 and "'int8'" in result.stderr and "float32, bfloat16, float16" in result.stderr
    assert not any(tmp_path.iterdir())


def test_merge_refuses_methods_that_are_not_weights(global_run: Path, tmp_path: Path, tmp_path_factory):
    prompt_run = _run(tmp_path_factory, "prompt-run", "peft.method=prompt")
    result = invoke("merge", prompt_run, tmp_path / "p")
    assert result.exit_code == 2
    assert "peft.method=prompt (PROMPT_TUNING)" in result.stderr and "nothing to merge" in result.stderr
    bottleneck = tmp_path / "bottleneck-run"
    shutil.copytree(global_run, bottleneck)
    config = yaml.safe_load((bottleneck / "config.yaml").read_text())
    config["peft"].update(method="adapter_h", method_args={})
    (bottleneck / "config.yaml").write_text(yaml.safe_dump(config))
    result = invoke("merge", bottleneck, tmp_path / "b")
    assert result.exit_code == 2
    assert "peft.method=adapter_h" in result.stderr and "cannot be merged" in result.stderr
    assert not (tmp_path / "p").exists() and not (tmp_path / "b").exists()


# ---- generate ----


def reference_text(adapter: Path, prompt: str, seed: int | None = None, base: bool = False, **options) -> str:
    """``model.generate`` on peft's own loading of the adapter: the prompt as fedpeft tokenizes training rows."""
    from transformers import AutoTokenizer

    model = peft_reference(adapter)
    tokenizer = AutoTokenizer.from_pretrained(str(adapter))
    ids = torch.tensor([[tokenizer.bos_token_id, *tokenizer(prompt, add_special_tokens=False)["input_ids"]]])
    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad(), model.disable_adapter() if base else contextlib.nullcontext():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pad_token_id=0, **options)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


GREEDY = ["--temperature", "0", "--num-beams", "1", "--max-new-tokens", "24"]


def test_generate_greedy_equals_model_generate(global_run: Path):
    result = invoke("generate", global_run, "--prompt", PROMPT, *GREEDY)
    assert result.exit_code == 0, result.output
    want = reference_text(global_run / "adapter", format_prompt(PROMPT), do_sample=False, max_new_tokens=24)
    assert want.strip(), "the reference generated nothing visible: the comparison would prove little"
    assert result.stdout == want + "\n"


def test_generate_beams_and_sampling_equal_model_generate(global_run: Path):
    adapter, prompt = global_run / "adapter", format_prompt(PROMPT)
    result = invoke("generate", global_run, "--prompt", PROMPT, "--temperature", "0", "--max-new-tokens", "16")
    assert result.exit_code == 0, result.output
    assert result.stdout == reference_text(adapter, prompt, do_sample=False, num_beams=4, max_new_tokens=16) + "\n"
    sampled = ["--temperature", "0.9", "--num-beams", "1", "--seed", "5", "--max-new-tokens", "24"]
    result = invoke("generate", global_run, "--prompt", PROMPT, *sampled)
    assert result.exit_code == 0, result.output
    options = {"do_sample": True, "temperature": 0.9, "top_p": 0.75, "top_k": 40, "max_new_tokens": 24}
    assert result.stdout == reference_text(adapter, prompt, seed=5, **options) + "\n"


def test_generate_base_stdin_and_no_template(global_run: Path):
    adapter = global_run / "adapter"
    result = invoke(
        "generate", global_run, "--prompt", "-", "--no-template", "--base", *GREEDY, stdin="def add(a, b):\n"
    )
    assert result.exit_code == 0, result.output
    want = reference_text(adapter, "def add(a, b):", base=True, do_sample=False, max_new_tokens=24)
    assert result.stdout == want + "\n"
    tuned = reference_text(adapter, "def add(a, b):", do_sample=False, max_new_tokens=24)
    assert invoke("generate", global_run, "--prompt", "def add(a, b):", "--no-template", *GREEDY).stdout == tuned + "\n"


def test_generate_a_personalised_runs_client(local_run: Path):
    result = invoke("generate", local_run, "--prompt", PROMPT, "--client", "1", *GREEDY)
    assert result.exit_code == 0, result.output
    want = reference_text(local_run / "adapter" / "client-1", format_prompt(PROMPT), do_sample=False, max_new_tokens=24)
    assert result.stdout == want + "\n"


@pytest.fixture(scope="module")
def served(global_run: Path):
    return load_run(global_run, "cpu")


def test_stream_chunks_join_to_the_generated_text(served):
    prompt = served.format_prompt(PROMPT)
    for settings in (
        SamplingSettings(temperature=0, num_beams=1, max_new_tokens=40),
        SamplingSettings(temperature=1.0, top_p=1.0, top_k=0, num_beams=1, max_new_tokens=40, seed=3),
    ):
        chunks = list(stream(served, "global", prompt, settings))
        assert len(chunks) > 1, "nothing was streamed"
        assert "".join(chunks) == generate(served, "global", prompt, settings)
    beams = SamplingSettings(temperature=0, max_new_tokens=16)
    assert list(stream(served, "global", prompt, beams)) == [generate(served, "global", prompt, beams)]


def test_stop_sequences_cut_streamed_and_whole_text(served):
    prompt = served.format_prompt(PROMPT)
    free = SamplingSettings(temperature=1.0, top_p=1.0, top_k=0, num_beams=1, max_new_tokens=40, seed=3)
    text = generate(served, "global", prompt, free)
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    assert len(stop) == 2 and stop.strip(), f"no usable stop sequence in {text!r}"
    settings = SamplingSettings(**{**free.__dict__, "stop": (stop,)})
    cut = text[: text.find(stop)]
    assert generate(served, "global", prompt, settings) == cut
    chunks = list(stream(served, "global", prompt, settings))
    assert "".join(chunks) == cut and not any(stop in c for c in chunks)


def test_closing_a_stream_early_stops_generating_and_releases_the_adapter(served):
    steps = []
    hook = served.model.get_base_model().register_forward_hook(lambda *_: steps.append(1))
    settings = SamplingSettings(temperature=0, num_beams=1, max_new_tokens=240)
    try:
        generate(served, "global", "def add(a, b):", settings)
        whole, steps[:] = len(steps), []
        chunks = stream(served, "global", "def add(a, b):", settings)
        next(chunks)
        chunks.close()
        assert served.lock.acquire(timeout=10)
        served.lock.release()
    finally:
        hook.remove()
    assert whole > 100, f"the whole generation took only {whole} steps: too short to show an early stop"
    assert len(steps) < whole / 2, f"closed after the first chunk, yet generated {len(steps)} of {whole} steps"
    assert not [t for t in threading.enumerate() if t.name.startswith("fedpeft-generate")]


def test_a_failed_generation_is_raised_to_the_stream_reader(served, monkeypatch: pytest.MonkeyPatch):
    def broken(**_):
        raise RuntimeError("out of memory (drill)")

    monkeypatch.setattr(served.model, "generate", broken)
    chunks = stream(served, "global", "def add(a, b):", SamplingSettings(temperature=0, num_beams=1))
    with pytest.raises(RuntimeError, match="drill"):
        list(chunks)
    assert served.lock.acquire(timeout=10)
    served.lock.release()


def test_generate_help_shows_the_sampling_defaults():
    result = invoke("generate", "--help")
    text = " ".join(result.stdout.replace("│", " ").split())
    defaults = SamplingSettings()
    for flag in ("temperature", "top_p", "top_k", "num_beams", "max_new_tokens", "seed"):
        assert f"Default: {getattr(defaults, flag)}." in text, flag


# ---- bad input ----


def test_generate_errors(global_run: Path, local_run: Path, tmp_path: Path):
    result = invoke("generate", tmp_path / "nowhere", "--prompt", "x")
    assert result.exit_code == 2 and "no such run directory" in result.stderr
    result = invoke("generate", local_run, "--prompt", "x", "--client", "9")
    assert result.exit_code == 2 and "--client 9" in result.stderr and "client-0, client-1" in result.stderr
    result = invoke("generate", global_run, "--prompt", "x", "--client", "0")
    assert result.exit_code == 2 and "one global adapter" in result.stderr
    result = invoke("generate", global_run, "--prompt", "x", "--client", "0", "--base")
    assert result.exit_code == 2 and "--base and --client" in result.stderr
    result = invoke("generate", global_run, "--prompt", "x", "--temperatur", "1")
    assert result.exit_code == 2 and "No such option" in result.output and "--temperature" in result.output
    result = invoke("generate", global_run, "--prompt", "x", "--top-p", "1.5")
    assert result.exit_code == 2 and "fedpeft generate: top_p=1.5: must be in (0, 1]" in result.stderr


def test_generate_on_a_failed_run_says_which_rounds_completed(global_run: Path, tmp_path: Path):
    failed = tmp_path / "failed-run"
    shutil.copytree(global_run, failed)
    shutil.rmtree(failed / "adapter")
    summary = json.loads((failed / "summary.json").read_text())
    summary.update(status="failed", rounds_completed=1, rounds_planned=2, error="client 1 ran out of memory")
    (failed / "summary.json").write_text(json.dumps(summary))
    for args in (["generate", failed, "--prompt", "x"], ["merge", failed, tmp_path / "out"]):
        result = invoke(*args)
        assert result.exit_code == 2
        assert "has no adapter/" in result.stderr and "failed (client 1 ran out of memory) after 1 of 2 rounds" in (
            result.stderr
        )


def test_prompt_over_the_context_is_refused_with_both_numbers(served, global_run: Path):
    long_prompt = " ".join(["word"] * 600)
    ids = [served.tokenizer.bos_token_id, *served.tokenizer(long_prompt, add_special_tokens=False)["input_ids"]]
    assert len(ids) > MICRO_CONTEXT
    result = invoke("generate", global_run, "--prompt", long_prompt, "--no-template")
    assert result.exit_code == 2
    assert f"the prompt is {len(ids)} tokens, over the model's context of {MICRO_CONTEXT} tokens" in result.stderr
    words = 1
    while 1 + len(served.tokenizer(" ".join(["word"] * words), add_special_tokens=False)["input_ids"]) < 300:
        words += 1
    fits = " ".join(["word"] * words)
    used = 1 + len(served.tokenizer(fits, add_special_tokens=False)["input_ids"])
    assert used + 400 > MICRO_CONTEXT > used
    result = invoke("generate", global_run, "--prompt", fits, "--no-template", "--max-new-tokens", "400")
    assert result.exit_code == 2
    assert f"set max_new_tokens to at most {MICRO_CONTEXT - used}" in result.stderr
