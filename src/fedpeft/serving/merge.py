"""A run's adapter merged into its base model: a standalone transformers model directory.

:func:`merge_run` writes OUT with the merged weights (``config.json``, safetensors, generation config), the
tokenizer beside them and ``merged_from.json`` saying what went in; ``AutoModelForCausalLM.from_pretrained(OUT)``
loads it without peft.

Notable choices:
- Only the one adapter being merged is loaded (not every client's, as :func:`fedpeft.serving.adapters.load_run`
  does), onto a base loaded for the purpose.
- LoRA-family adapters (LoRA, DoRA, rsLoRA, IA3, ...) are merged by peft's own ``merge_and_unload``. Methods
  whose effect is not a change of weights are refused, naming the method: prompt, P-tuning and prefix tuning
  add virtual tokens or key/value prefixes at run time, and the bottleneck adapters (adapter_h, adapter_p,
  parallel) add non-linear modules that no weight matrix can absorb. ``peft.method: full`` trained the whole
  model, which is written out in the chosen dtype.
- A quantised base (``model.quantization`` 8bit or 4bit) is not merged into its quantised weights (which would
  round the adapter's update away): the base is loaded unquantised in the merge dtype and the adapter merged
  into that dequantised copy. Its outputs are then those of the full-precision base plus the adapter, close to
  but not identical with the quantised model the adapter was trained on.
- The merge happens in the output dtype (memory is the size of the result); ``float32`` is exact to rounding.
- A personalised run has no single model: ``client`` must name one of its clients.
- OUT is never overwritten by accident: an existing, non-empty OUT is refused unless ``force``; even then a
  directory that holds the run itself is refused. The model is written to a fresh sibling first and moved into
  place, so a failed merge leaves no half-written OUT.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fedpeft.config.recipes import load_run_config
from fedpeft.models.base import DTYPES, load_base_model, resolve_device
from fedpeft.reporting import run_dir as rd
from fedpeft.serving.adapters import GLOBAL, ServingError, adapter_dirs

BOTTLENECK_METHODS = ("adapter_h", "adapter_p", "parallel")
MERGE_INFO_FILE = "merged_from.json"
GENERATIVE_TASK_TYPES = ("CAUSAL_LM", "SEQ_2_SEQ_LM")


@dataclass(frozen=True)
class MergedModel:
    """What :func:`merge_run` wrote."""

    out: Path
    run_dir: Path
    adapter: str
    """``global`` or ``client-N``."""
    method: str
    dtype: str
    dequantized_from: str
    """The run's ``model.quantization`` when the base was quantised (merged into an unquantised copy), else none."""


def choose_adapter(run_dir: Path, client: int | None) -> tuple[str, Path]:
    """The served name and directory of the adapter ``client`` names (None: a global run's adapter)."""
    dirs = adapter_dirs(run_dir)
    clients = [n for n in dirs if n != GLOBAL]
    if client is None:
        if GLOBAL in dirs:
            return GLOBAL, dirs[GLOBAL]
        raise ServingError(
            f"{run_dir} is a personalised run with one adapter per client ({', '.join(clients)}); choose one with "
            "--client N"
        )
    if GLOBAL in dirs:
        raise ServingError(f"--client {client}: {run_dir} trained one global adapter (not a personalised run)")
    name = f"client-{client}"
    if name not in dirs:
        raise ServingError(f"--client {client}: {run_dir} has {', '.join(clients)}")
    return name, dirs[name]


def _check_out(out: Path, run_dir: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ServingError(f"OUT {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise ServingError(f"OUT {out} exists and is not empty; choose a new directory or pass --force")
        resolved, run = out.resolve(), run_dir.resolve()
        if resolved == run or resolved in run.parents:
            raise ServingError(f"OUT {out} holds the run {run_dir}; --force would delete it: choose another OUT")


def _check_method(method: str, adapter: Path) -> str:
    """The adapter's peft task type, or a refusal naming a method whose adapter cannot be merged."""
    if method in BOTTLENECK_METHODS:
        raise ServingError(
            f"peft.method={method}: bottleneck adapters add non-linear modules between layers, which no change "
            "of the base weights can reproduce, so they cannot be merged; use the run's adapter as it is"
        )
    from peft import PeftConfig

    try:
        config = PeftConfig.from_pretrained(str(adapter))
    except (OSError, ValueError) as err:
        raise ServingError(f"{adapter} is not a peft adapter directory ({err})") from None
    if config.is_prompt_learning:
        raise ServingError(
            f"peft.method={method} ({getattr(config.peft_type, 'value', config.peft_type)}): prompt-learning methods add virtual tokens or key/value "
            "prefixes at run time rather than changing weights, so there is nothing to merge; serve the run "
            "instead (fedpeft serve) or train a LoRA-family method"
        )
    task_type = str(getattr(config, "task_type", None) or "CAUSAL_LM")
    if task_type not in GENERATIVE_TASK_TYPES:
        raise ServingError(
            f"{adapter} is a {task_type} adapter; merge writes text-generation models ({', '.join(GENERATIVE_TASK_TYPES)})"
        )
    return task_type


def merge_run(
    run_dir: Path,
    out: Path,
    client: int | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    force: bool = False,
) -> MergedModel:
    """Merge the run's adapter (a personalised run: ``client``'s) into its base and write the result to ``out``."""
    run_dir, out = Path(run_dir).expanduser(), Path(out).expanduser()
    if dtype not in DTYPES:
        raise ServingError(f"--dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    name, adapter = choose_adapter(run_dir, client)
    _check_out(out, run_dir, force)
    config = load_run_config(run_dir / rd.CONFIG_FILE)
    method, quantization = config.peft.method, config.model.quantization
    target = str(resolve_device(device))
    if method == "full":
        loaded = load_base_model(str(adapter), dtype, device=target)
        model = loaded.model
    else:
        task_type = _check_method(method, adapter)
        from peft import PeftModel

        head = "seq2seq_lm" if task_type == "SEQ_2_SEQ_LM" else "causal_lm"
        loaded = load_base_model(config.model.name, dtype, head=head, device=target, quantization="none")
        peft_model = PeftModel.from_pretrained(loaded.model, str(adapter), adapter_name=name)
        model = peft_model.merge_and_unload()
    model.eval()
    info = MergedModel(
        out=out,
        run_dir=run_dir,
        adapter=name,
        method=method,
        dtype=dtype,
        dequantized_from=quantization if quantization != "none" else "none",
    )
    _write(model, loaded.tokenizer, info)
    return info


def _write(model, tokenizer, info: MergedModel) -> None:
    """Save into a fresh sibling of OUT, then put it in OUT's place."""
    out = info.out
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.merging-", dir=out.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        record = {
            "run_dir": str(info.run_dir.resolve()),
            "adapter": info.adapter,
            "peft_method": info.method,
            "dtype": info.dtype,
            "dequantized_from": info.dequantized_from,
        }
        (staging / MERGE_INFO_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
