"""``fedpeft generate`` and ``fedpeft merge``: use what a run trained from the command line.

Notable choices:
- ``generate`` streams to the terminal as the text is generated; with beam search (the default 4 beams,
  Shepherd's) transformers cannot stream, so the text comes at once: ``--num-beams 1`` streams.
- Sampling flags left out keep :class:`fedpeft.serving.sampling.SamplingSettings`' defaults; the values are
  checked by :func:`fedpeft.serving.sampling.sampling_from`, the same check the HTTP server's requests get.
- ``--prompt -`` reads the prompt from standard input (a trailing newline is dropped).
- ``merge`` never overwrites: an existing, non-empty OUT is refused unless ``--force``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from fedpeft.cli import _fail, _reported, app


@app.command()
def generate(
    run_dir: Annotated[Path, typer.Argument(help="A finished run's directory.")],
    prompt: Annotated[str, typer.Option(help="The prompt; '-' reads it from standard input.")],
    client: Annotated[
        int | None, typer.Option(help="A personalised run's client N (adapter client-N); default: global or client-0.")
    ] = None,
    base: Annotated[
        bool, typer.Option("--base", help="The base model with every adapter off, for comparison.")
    ] = False,
    template: Annotated[
        bool,
        typer.Option(help="Wrap the prompt in the run's template (instruction runs; code prompts go as they are)."),
    ] = True,
    temperature: Annotated[float | None, typer.Option(help="0 is greedy decoding. Default: 0.1.")] = None,
    top_p: Annotated[float | None, typer.Option(help="Nucleus sampling mass, in (0, 1]. Default: 0.75.")] = None,
    top_k: Annotated[
        int | None, typer.Option(help="Sample among the k likeliest tokens (0: all). Default: 40.")
    ] = None,
    num_beams: Annotated[
        int | None, typer.Option(help="Beam search width; 1 streams token by token. Default: 4.")
    ] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Longest completion. Default: 128.")] = None,
    stop: Annotated[list[str] | None, typer.Option("--stop", help="Stop sequence (repeatable).")] = None,
    seed: Annotated[int | None, typer.Option(help="Sampling seed. Default: 0.")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:N or auto (default: the run's).")] = None,
) -> None:
    """Generate a completion with a run's adapter, streamed to the terminal."""
    from fedpeft.serving.adapters import BASE, client_name, load_run
    from fedpeft.serving.sampling import sampling_from, stream

    if base and client is not None:
        _fail("--base and --client choose two different models; give one of them")
    text = sys.stdin.read().removesuffix("\n") if prompt == "-" else prompt
    chosen = {
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "num_beams": num_beams,
        "max_new_tokens": max_new_tokens,
        "stop": tuple(stop) if stop else None,
        "seed": seed,
    }
    with _reported():
        settings = sampling_from(chosen, source="fedpeft generate")
        run = load_run(run_dir, device)
        name = BASE if base else client_name(run, client)
        for chunk in stream(run, name, run.format_prompt(text, template), settings):
            typer.echo(chunk, nl=False)
            sys.stdout.flush()
    typer.echo("")


@app.command()
def merge(
    run_dir: Annotated[Path, typer.Argument(help="A finished run's directory.")],
    out: Annotated[Path, typer.Argument(help="Where to write the merged model (a new or empty directory).")],
    client: Annotated[int | None, typer.Option(help="A personalised run's client N (required for one).")] = None,
    dtype: Annotated[str, typer.Option(help="Weights' dtype: float32, bfloat16 or float16.")] = "float32",
    device: Annotated[str, typer.Option(help="Where to merge: cpu, cuda, cuda:N or auto.")] = "cpu",
    force: Annotated[bool, typer.Option(help="Replace OUT's contents if it is not empty.")] = False,
) -> None:
    """Write a standalone transformers model with a run's adapter merged into the base weights."""
    from fedpeft.serving.merge import merge_run

    with _reported():
        merged = merge_run(run_dir, out, client=client, dtype=dtype, device=device, force=force)
    typer.echo(f"merged {merged.adapter} ({merged.method}) into {merged.out} ({merged.dtype})")
