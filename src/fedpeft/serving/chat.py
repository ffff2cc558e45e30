"""A Gradio chat UI over every adapter of a run: one prompt to one adapter, or to two side by side.

:func:`make_ui` builds the page over a :class:`~fedpeft.serving.adapters.ServedRun` (the global adapter or
each client's, and ``base`` with adapters off), :func:`launch_ui` serves it on the loopback interface, and
:func:`generate_answer` is the one generation path both panes use, callable without the UI.

Notable choices:
- Never a public share link (Shepherd's UI opens one): :func:`launch_ui` passes ``share=False`` explicitly,
  which overrides ``GRADIO_SHARE`` and gradio's hosted-notebook default, and refuses to return a UI whose
  ``share``/``share_url`` are set. Analytics are off (``GRADIO_ANALYTICS_ENABLED=False`` before gradio is
  imported, and ``analytics_enabled=False``), server-side rendering is off (no Node process) and the default
  theme's fonts are served by gradio itself, so nothing is fetched from the internet by the server or the page.
- Sampling defaults are Shepherd's (temperature 0.1, top_p 0.75, top_k 40, 4 beams, 128 new tokens).
  Temperature 0 is greedy (beam search when beams > 1); above 0 it samples (beam sampling with beams > 1),
  seeded, so the same settings and seed give the same answer. Generation is the serving layer's
  (:func:`fedpeft.serving.sampling.generate`), as ``fedpeft generate`` and the HTTP server use it.
- Each turn is one prompt and its answer: earlier turns are not fed back, since the run's adapters were
  trained on single instruction/response pairs. Instruction runs wrap the prompt in the run's template
  (a checkbox turns that off); code runs send it as it is.
- A prompt that with the new tokens would not fit the model's context, an empty prompt or a setting out of
  range is reported in the page (``gradio.Error``) naming the value and what is valid; the UI keeps serving.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from fedpeft.serving.adapters import BASE, ServedRun, ServingError
from fedpeft.serving.sampling import SamplingSettings, generate, sampling_from

if TYPE_CHECKING:
    import gradio


LIMITS: dict[str, tuple[float, float]] = {
    "temperature": (0.0, 2.0),
    "top_p": (0.05, 1.0),
    "top_k": (0, 200),
    "num_beams": (1, 8),
    "max_new_tokens": (1, 1024),
    "seed": (0, 2**31 - 1),
}
"""Valid range of each sampling setting (inclusive), which the UI's sliders also span."""


Sampling = SamplingSettings
"""The chat's sampling settings are the serving layer's (Shepherd's defaults); the UI spans :data:`LIMITS`."""


def generate_answer(run: ServedRun, name: str, prompt: str, sampling: Sampling, template: bool = True) -> str:
    """The answer of adapter ``name`` (``base``: none) to ``prompt``, in the run's template unless told not:
    :func:`fedpeft.serving.sampling.generate`, which checks the name, the settings and the context."""
    if not prompt.strip():
        raise ServingError("the prompt is empty: type a message first")
    return generate(run, name, run.format_prompt(prompt, template), sampling)


def settings_from_ui(values: tuple[float, ...]) -> Sampling:
    """The sliders' values (in :data:`LIMITS` order) as sampling settings, each within its slider's range."""
    chosen = dict(zip(LIMITS, values, strict=True))
    for key, value in chosen.items():
        low, high = LIMITS[key]
        if value is None or not low <= value <= high:
            raise ServingError(f"{key}={value}: must be between {low:g} and {high:g}")
    return sampling_from(chosen, source="chat settings")


def _import_gradio() -> Any:
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    import gradio

    return gradio


def _describe(run: ServedRun) -> str:
    data = run.config.data
    adapters = ", ".join(f"`{n}`" for n in run.names)
    how = (
        f"Prompts are wrapped in the run's `{data.template}` template (untick it under Sampling to send them raw)."
        if data.task == "instruction"
        else f"Task `{data.task}`: prompts are sent as they are."
    )
    return (
        f"## fedpeft chat · `{run.run_dir.name}`\nBase model `{run.config.model.name}`, adapters {adapters} "
        f"(`{BASE}`: adapters off). {how} Each message is answered on its own; earlier turns are not sent."
    )


def make_ui(run: ServedRun, defaults: Sampling | None = None) -> gradio.Blocks:
    """The chat page over ``run``: pick an adapter and ask, or ask two adapters side by side."""
    gr = _import_gradio()
    defaults = defaults or Sampling()
    others = [n for n in run.names if n != run.default]
    second = BASE if BASE in run.names else (others[0] if others else run.default)

    def ask(name: str, prompt: str, template: bool, *settings: float) -> str:
        try:
            return generate_answer(run, name, prompt, settings_from_ui(settings), template)
        except (ServingError, ValueError) as err:
            raise gr.Error(str(err)) from err

    def ask_both(left: str, right: str, prompt: str, template: bool, *settings: float) -> tuple[str, str]:
        return ask(left, prompt, template, *settings), ask(right, prompt, template, *settings)

    with gr.Blocks(title=f"fedpeft chat · {run.run_dir.name}", analytics_enabled=False) as ui:
        gr.Markdown(_describe(run))
        with gr.Accordion("Sampling", open=True):
            template = gr.Checkbox(
                value=True,
                label=f"Use the run's prompt template ({run.config.data.template})",
                visible=run.config.data.task == "instruction",
                elem_id="fedpeft-template",
            )
            with gr.Row():
                settings = [
                    _setting(gr, "temperature", "Temperature (0: greedy)", defaults, 0.05),
                    _setting(gr, "top_p", "Top p", defaults, 0.05),
                    _setting(gr, "top_k", "Top k (0: no cut)", defaults, 1),
                    _setting(gr, "num_beams", "Beams", defaults, 1),
                    _setting(gr, "max_new_tokens", "Max new tokens", defaults, 1),
                    gr.Number(value=defaults.seed, label="Seed", precision=0, elem_id="fedpeft-seed"),
                ]
        with gr.Tab("Chat", elem_id="fedpeft-tab-chat"):
            adapter = gr.Dropdown(run.names, value=run.default, label="Adapter", elem_id="fedpeft-adapter")
            prompt = gr.Textbox(label="Prompt", lines=3, placeholder="Ask the model", elem_id="fedpeft-prompt")
            send = gr.Button("Send", variant="primary", elem_id="fedpeft-send")
            answer = gr.Textbox(label="Answer", lines=8, interactive=False, elem_id="fedpeft-answer")
        with gr.Tab("Side by side", elem_id="fedpeft-tab-compare"):
            with gr.Row():
                left = gr.Dropdown(run.names, value=run.default, label="Left adapter", elem_id="fedpeft-left")
                right = gr.Dropdown(run.names, value=second, label="Right adapter", elem_id="fedpeft-right")
            both_prompt = gr.Textbox(label="Prompt", lines=3, elem_id="fedpeft-compare-prompt")
            compare = gr.Button("Compare", variant="primary", elem_id="fedpeft-compare")
            with gr.Row():
                left_answer = gr.Textbox(label="Left answer", lines=8, interactive=False, elem_id="fedpeft-left-answer")
                right_answer = gr.Textbox(
                    label="Right answer", lines=8, interactive=False, elem_id="fedpeft-right-answer"
                )
        one = {"fn": ask, "inputs": [adapter, prompt, template, *settings], "outputs": answer}
        send.click(**one)
        prompt.submit(**one)
        compare.click(ask_both, [left, right, both_prompt, template, *settings], [left_answer, right_answer])
    return ui


def _setting(gr: Any, key: str, label: str, defaults: Sampling, step: float) -> Any:
    low, high = LIMITS[key]
    value = asdict(defaults)[key]
    return gr.Slider(low, high, value=value, step=step, label=label, elem_id=f"fedpeft-{key.replace('_', '-')}")


def launch_ui(
    run: ServedRun,
    host: str = "127.0.0.1",
    port: int = 7860,
    *,
    defaults: Sampling | None = None,
    block: bool = True,
    quiet: bool = False,
) -> gradio.Blocks:
    """Serve :func:`make_ui` on ``host:port``, never through a share link. ``block`` waits until Ctrl-C;
    otherwise the UI runs in a thread and the caller stops it with ``.close()``."""
    ui = make_ui(run, defaults)
    try:
        ui.launch(
            server_name=host,
            server_port=port,
            share=False,
            inbrowser=False,
            prevent_thread_lock=True,
            ssr_mode=False,
            show_error=True,
            quiet=quiet,
        )
    except OSError as err:
        raise ServingError(
            f"cannot serve the chat UI on {host}:{port}: the port is in use or not yours to bind; choose another "
            "with --port"
        ) from err
    if ui.share or getattr(ui, "share_url", None):
        ui.close()
        raise ServingError(f"gradio opened a public share link ({ui.share_url}); fedpeft chat serves locally only")
    if block:
        try:
            ui.block_thread()
        finally:
            ui.close()
    return ui
