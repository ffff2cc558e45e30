"""Live progress for a run: a rounds bar, a client-steps bar and one line per round (rich)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

HEADLINE_METRICS = [
    ("perplexity", "ppl"),
    ("token_accuracy", "acc"),
    ("bleu", "bleu"),
    ("accuracy", "acc"),
    ("f1", "f1"),
    ("mcc", "mcc"),
    ("mrr", "mrr"),
]


class RunProgress:
    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.console = Console(stderr=False, quiet=quiet)
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
            disable=quiet,
        )
        self._rounds = None
        self._steps = None

    def __enter__(self) -> RunProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def message(self, text: str) -> None:
        self.console.print(text, highlight=False)

    def start_rounds(self, total: int, completed: int) -> None:
        self._rounds = self.progress.add_task("rounds", total=total, completed=completed)

    def advance_round(self) -> None:
        if self._rounds is not None:
            self.progress.advance(self._rounds)

    def start_client(self, client_id: int, steps: int) -> None:
        if self._steps is not None:
            self.progress.remove_task(self._steps)
        label = f"client-{client_id}" if client_id >= 0 else "pooled clients"
        self._steps = self.progress.add_task(label, total=steps)

    def client_step(self, done: int, total: int) -> None:
        if self._steps is not None:
            self.progress.update(self._steps, completed=done)

    def round_line(
        self,
        rnd: int,
        clients: Sequence[int],
        train_loss: float | None,
        test: dict[str, float] | None,
        bytes_exchanged: int,
        seconds: float,
    ) -> None:
        parts = [f"round {rnd:>3}", f"clients {','.join(map(str, clients)) or '-'}"]
        parts.append(f"train {train_loss:.4f}" if train_loss is not None else "train -")
        if test:
            shown = [f"eval {test['loss']:.4f}"]
            for key, label in HEADLINE_METRICS:
                if key in test:
                    shown.append(f"{label} {test[key]:.3f}" if key != "perplexity" else f"{label} {test[key]:.2f}")
            parts.append(" ".join(shown))
        else:
            parts.append("eval -")
        parts.append(f"{bytes_exchanged / 1e6:.3f} MB {seconds:.1f} s")
        self.progress.console.print(" | ".join(parts), highlight=False, soft_wrap=True)
