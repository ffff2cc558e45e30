"""The page ``fedpeft report COMPARE_DIR`` writes for a ``fedpeft compare`` directory: its table (compare.md,
as written), each entry's metric per round (mean and min..max band over ``--seeds``), bytes against quality
with one point per entry, and a card per entry linking its run directory (relative links, so the page moves
with the directory). Built from ``reporting.report``'s page pieces; a comparison stopped before its first
entry finished gets a note, not an exception.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fedpeft.reporting import plots
from fedpeft.reporting import run_dir as rd
from fedpeft.reporting.report import (
    COMPARE_JSON,
    COMPARE_TABLE,
    REPORT_FILE,
    entry_runs,
    esc,
    figure,
    note,
    render,
    section,
    table,
)


def markdown_table(text: str) -> str:
    """compare.md (a pipe table, then notes) as HTML."""
    lines = [line for line in text.splitlines() if line.strip()]
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines if line.lstrip().startswith("|")]
    rest = [line for line in lines if not line.lstrip().startswith("|")]
    if len(cells) < 2:
        return note(f"{COMPARE_TABLE} holds no table")
    head = "".join(f"<th>{esc(c)}</th>" for c in cells[0])
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in cells[2:])
    return f"<table><tr>{head}</tr>{body}</table>" + "".join(f"<p>{esc(line)}</p>" for line in rest)


def compare_page(path: Path, page_dir: Path) -> str:
    notes, data = [], {}
    try:
        data = rd.read_json(path / COMPARE_JSON) if (path / COMPARE_JSON).is_file() else {}
    except (OSError, ValueError) as err:
        notes.append(f"{COMPARE_JSON} cannot be read: {err}")
    if not isinstance(data, dict):
        notes.append(f"{COMPARE_JSON} is not a JSON object; left out")
        data = {}
    rows = [r for r in data.get("rows") or [] if isinstance(r, dict)]
    if not (path / COMPARE_JSON).is_file():
        notes.append(f"{COMPARE_JSON} is missing: the comparison stopped before its first entry finished")
    seeds = data.get("seeds")
    lead = f"recipe {data.get('recipe', 'unknown')}; overrides: {' '.join(data.get('overrides') or []) or 'none'}"
    if seeds:
        lead += f"; seeds {', '.join(map(str, seeds))}, reference entry {data.get('reference')}"
    sections: list[tuple[str, str, str]] = []
    section(sections, "table", "Comparison table", lambda: compare_table_section(path))
    section(sections, "curves", "Metric per round", lambda: compare_curves(rows, bool(seeds)))
    section(sections, "bytes", "Bytes against quality", lambda: compare_bytes(rows))
    section(sections, "entries", "Entries", lambda: entries_section(path, rows, page_dir))
    intro = f"<p>{esc(path.resolve())}</p><p>{esc(lead)}</p>" + "".join(note(n) for n in notes)
    return render(f"fedpeft comparison {path.name}", intro, sections)


def compare_table_section(path: Path) -> str:
    if not (path / COMPARE_TABLE).is_file():
        return note(f"not recorded: {COMPARE_TABLE} is missing")
    return markdown_table((path / COMPARE_TABLE).read_text(errors="replace"))


def compare_curves(rows: list[dict[str, Any]], seeded: bool) -> str:
    if not rows:
        return note("no entry has finished yet")
    metric = rows[0]["metric"]
    if seeded:
        curves: dict[str, list[list[tuple[int, float]]]] = {}
        for r in rows:
            curves.setdefault(r["strategy"], []).append([tuple(p) for p in r["curve"]])
        return figure(plots.plot_comparison_bands, curves, metric, alt=f"{metric} per round, mean and band over seeds")
    return figure(
        plots.plot_comparison,
        {r["strategy"]: [tuple(p) for p in r["curve"]] for r in rows},
        metric,
        alt=f"{metric} per round",
    )


def compare_bytes(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return note("no entry has finished yet")
    grouped: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        grouped.setdefault(r["strategy"], []).append(r)
    entries = {}
    for label, mine in grouped.items():
        finals = [r["final"] for r in mine]
        entries[label] = (
            sum(r["megabytes"] for r in mine) / len(mine),
            sum(finals) / len(finals),
            min(finals),
            max(finals),
        )
    return figure(plots.plot_bytes_quality_entries, entries, rows[0]["metric"], alt="final metric against MB per entry")


def entries_section(path: Path, rows: list[dict[str, Any]], page_dir: Path) -> str:
    """A card per finished run (each seed its own), then any run directory under runs/ that compare.json lacks."""
    runs, found = path / "runs", entry_runs(path)
    cards, listed = [], set()
    for r in rows:
        run_dir = Path(r["run_dir"])
        if not run_dir.is_dir():  # the comparison directory was moved: its runs/ moved with it
            run_dir = runs / run_dir.parent.name / run_dir.name
        listed.add(run_dir.resolve())
        cards.append(
            entry_card(r["strategy"] + ("" if "seed" not in r else f" (seed {r['seed']})"), run_dir, page_dir, r)
        )
    for run_dir in (p for p in found if p.resolve() not in listed):
        cards.append(entry_card(f"{run_dir.parent.name} (not in {COMPARE_JSON}: unfinished)", run_dir, page_dir, None))
    return f'<div class="fig">{"".join(cards)}</div>' if cards else note("no entry run directory found")


def entry_card(label: str, run_dir: Path, page_dir: Path, row: dict[str, Any] | None) -> str:
    head = f'<div class="card"><h3>{esc(label)}</h3>'
    if not run_dir.is_dir():
        return head + note(f"its run directory {run_dir} is missing") + "</div>"
    rel = quote(os.path.relpath(run_dir, page_dir).replace(os.sep, "/"))
    links = f'<p>run directory <a href="{esc(rel)}/">{esc(rel)}</a>'
    if (run_dir / REPORT_FILE).is_file():
        links += f' · <a href="{esc(rel)}/{REPORT_FILE}">its report</a>'
    figures = ""
    if row is not None:
        header = ["final", "best", "final test loss", "MB", "peak RSS MB", "seconds"]
        keys = ("final", "best", "final_loss", "megabytes", "peak_rss_mb", "seconds")
        figures = table(header, [[row.get(k) for k in keys]])
    try:
        rounds = [r for r in rd.MetricsLog(run_dir / rd.METRICS_FILE).read() if r.get("type") == "round"]
    except rd.RunDirError as err:
        return head + links + "</p>" + figures + note(str(err)) + "</div>"
    loss = figure(plots.plot_losses, rounds, alt=f"loss per round, {label}") if rounds else note("no rounds recorded")
    return head + links + "</p>" + figures + loss + "</div>"
