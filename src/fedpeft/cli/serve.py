"""``fedpeft serve``: an OpenAI-compatible HTTP server over every adapter of a run.

``--engine transformers`` (default) serves :func:`fedpeft.serving.api.make_app` on uvicorn.
``--engine vllm`` replaces this process with vLLM's own OpenAI server (``vllm serve``) on a GPU machine: the
run's base model as ``base`` (``--served-model-name``) and every adapter as a LoRA module under the same names
(``global=DIR``, ``client-0=DIR``, ...), with ``--enable-lora``, ``--max-loras`` the adapter count and
``--max-lora-rank`` the largest rank rounded up to one vLLM accepts. A chat template is passed that renders
messages as fedpeft's server does (the run's instruction template, or a ``role: content`` transcript), so both
engines see the same prompts; vLLM adds no ``\\nuser:`` stop of its own. ``--dry-run`` prints that command.

Notable choices:
- The port is bound before the model loads, so a port in use is reported at once (exit 2); uvicorn is then
  handed that very socket, so no other process can take the port in between.
- Binding to anything but a loopback address without ``--api-key`` is allowed but warned about.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer

from fedpeft.cli import _reported, app

ENGINES = ("transformers", "vllm")
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The values vLLM's ``--max-lora-rank`` takes."""


def vllm_chat_template(task: str, template: str) -> str:
    """A one-line Jinja chat template that renders messages as ``fedpeft.serving.api.render_chat`` does."""
    q = json.dumps
    if task != "instruction":
        return (
            "{% for m in messages %}{{ m.role }}: {{ m.content }}{% if not loop.last %}{{ " + q("\n") + " }}"
            "{% endif %}{% endfor %}{% if messages[-1].role != 'assistant' %}{{ " + q("\nassistant:") + " }}"
            "{% endif %}"
        )
    from fedpeft.data.tasks.common import format_prompt

    prefix, suffix = format_prompt("\x00", template).split("\x00")
    gap = q("\n\n")
    return (
        "{% set ns = namespace(pre=[]) %}{% for m in messages %}"
        "{% if m.role in ('system', 'developer') %}{% set ns.pre = ns.pre + [m.content] %}"
        "{% elif m.role == 'user' %}{{ " + q(prefix) + " }}{{ (ns.pre + [m.content]) | join(" + gap + ") }}"
        "{{ " + q(suffix) + " }}{% set ns.pre = [] %}"
        "{% else %}{{ m.content }}{% if not loop.last %}{{ " + gap + " }}{% endif %}{% endif %}{% endfor %}"
    )


def vllm_command(run_dir: Path, host: str, port: int, api_key: str | None) -> list[str]:
    """``vllm serve`` with the run's base model and every adapter it wrote as a LoRA module."""
    from fedpeft.config.recipes import load_run_config
    from fedpeft.models.base import resolve_model_source
    from fedpeft.reporting import run_dir as rd
    from fedpeft.serving.adapters import ServingError, adapter_dirs

    dirs = adapter_dirs(run_dir)
    config = load_run_config(run_dir / rd.CONFIG_FILE)
    if config.model.quantization == "8bit":
        raise ServingError(
            "model.quantization=8bit: vLLM's bitsandbytes loader takes 4-bit only; use the transformers engine"
        )
    command = ["vllm", "serve"]
    if config.peft.method == "full":
        (whole,) = dirs.values()
        command += [str(whole), "--served-model-name", "global"]
    else:
        ranks = []
        for name, where in dirs.items():
            settings = json.loads((where / "adapter_config.json").read_text(encoding="utf-8"))
            if settings.get("peft_type") != "LORA" or settings.get("use_dora"):
                kind = "DoRA" if settings.get("use_dora") else settings.get("peft_type")
                raise ServingError(
                    f"{where}: vLLM serves LoRA adapters only, and {name} is {kind} "
                    f"(peft.method={config.peft.method}); use --engine transformers"
                )
            if settings.get("modules_to_save"):
                raise ServingError(
                    f"{where}: vLLM cannot load a LoRA adapter's modules_to_save "
                    f"({settings['modules_to_save']}); use --engine transformers"
                )
            ranks += [settings.get("r", 8), *settings.get("rank_pattern", {}).values()]
        rank = next((r for r in VLLM_LORA_RANKS if r >= max(ranks)), None)
        if rank is None:
            raise ServingError(f"LoRA rank {max(ranks)} is over vLLM's largest --max-lora-rank {VLLM_LORA_RANKS[-1]}")
        command += [resolve_model_source(config.model.name), "--served-model-name", "base", "--enable-lora"]
        command += ["--max-loras", str(len(dirs)), "--max-lora-rank", str(rank)]
        command += ["--lora-modules", *(f"{name}={where.resolve()}" for name, where in dirs.items())]
    if config.model.quantization == "4bit":
        command += ["--quantization", "bitsandbytes"]
    command += ["--dtype", config.model.dtype, "--host", host, "--port", str(port)]
    command += ["--chat-template", vllm_chat_template(config.data.task, config.data.template)]
    if api_key:
        command += ["--api-key", api_key]
    return command


def _exec_vllm(command: list[str]) -> None:
    from fedpeft.serving.adapters import ServingError

    if importlib.util.find_spec("vllm") is None:
        raise ServingError(
            "--engine vllm needs vLLM, which is not installed here: run it on a machine with a CUDA GPU and "
            "`pip install vllm`, or serve with --engine transformers (--dry-run prints the vLLM command)"
        )
    beside = Path(sys.executable).with_name("vllm")
    program = str(beside) if beside.is_file() else shutil.which("vllm")
    if program is None:
        raise ServingError("vLLM is importable but its `vllm` command is not on PATH; reinstall vllm")
    os.execv(program, [program, *command[1:]])


@app.command()
def serve(
    run_dir: Annotated[Path, typer.Argument(help="A finished run's directory.")],
    host: Annotated[str, typer.Option(help="Address to listen on (default: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    api_key: Annotated[
        str | None, typer.Option(help="Require `Authorization: Bearer KEY` on every request.", envvar="FEDPEFT_API_KEY")
    ] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:N or auto (default: the run's).")] = None,
    engine: Annotated[
        str, typer.Option(help="transformers (this process) or vllm (vLLM's server, GPU).")
    ] = "transformers",
    dry_run: Annotated[
        bool, typer.Option(help="With --engine vllm: print the vLLM command instead of running it.")
    ] = False,
) -> None:
    """Serve every adapter of a run (global or client-N, and base) behind an OpenAI-compatible API."""
    from fedpeft.serving.adapters import ServingError, is_loopback
    from fedpeft.serving.api import bind_socket

    with _reported():
        if engine not in ENGINES:
            raise ServingError(f"--engine {engine!r}: valid: {', '.join(ENGINES)}")
        if not 0 <= port <= 65535:
            raise ServingError(f"--port {port}: must be in 0..65535")
        if not is_loopback(host) and not api_key:
            typer.echo(f"warning: serving on {host} without --api-key: anyone who can reach it can use it", err=True)
        if engine == "vllm":
            command = vllm_command(run_dir, host, port, api_key)
            if dry_run:
                typer.echo(shlex.join(command))
                return
            bind_socket(host, port).close()
            _exec_vllm(command)
        if dry_run:
            raise ServingError("--dry-run prints the vLLM command; give it with --engine vllm")
        _serve_transformers(run_dir, host, port, api_key, device)


def _serve_transformers(run_dir: Path, host: str, port: int, api_key: str | None, device: str | None) -> None:
    import uvicorn

    from fedpeft.serving.adapters import load_run
    from fedpeft.serving.api import bind_socket, make_app

    sock = bind_socket(host, port)
    try:
        run = load_run(run_dir, device)
        where = f"http://{host}:{sock.getsockname()[1]}/v1"
        typer.echo(f"serving {', '.join(run.names)} (default {run.default}) from {run_dir} at {where}")
        uvicorn.Server(uvicorn.Config(make_app(run, api_key), log_level="info")).run(sockets=[sock])
    finally:
        sock.close()
