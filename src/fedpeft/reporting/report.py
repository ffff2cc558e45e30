"""``fedpeft report``: one self-contained HTML page for a run directory or a comparison directory.

A run's page shows its headline metric and losses per round (global and per client), the cumulative bytes it
exchanged against the quality they bought, time per round, peak memory, the partition heatmap, the last mixing
matrix of a personalised strategy, per-client metrics, the configuration and the environment. A comparison's page
shows its table (compare.md, as ``fedpeft compare`` wrote it), each entry's metric per round (mean and min..max
band over seeds), bytes against quality with one point per entry, and a section per entry linking its run.

Notable choices:
- Self-contained: every figure is a PNG drawn by ``reporting.plots`` (Agg backend) and embedded as a base64 data
  URI; the style sheet is inline; there is no script and no URL outside the page (links to the entries' run
  directories are relative paths).
- Everything read from disk is written through ``html.escape``.
- Missing or unreadable pieces (an old run, a run interrupted before round 1, a run still going) become a note in
  their section, never an exception: a section whose records are malformed says so and the others still render.
- The headline metric is the compare table's (``reporting.compare_table.headline_metric``).
- A comparison's page is built in ``reporting.compare_report``.
- A run that records its environment (``environment.json`` or summary.json's ``environment``, as written by
  :func:`environment_now`) is shown as recorded; otherwise the environment is read at report time and labelled so.
"""

from __future__ import annotations

import base64
import html
import importlib.metadata
import io
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from fedpeft.errors import FedpeftError
from fedpeft.paths import atomic_write_text
from fedpeft.reporting import plots
from fedpeft.reporting import run_dir as rd
from fedpeft.reporting.compare_table import headline_metric

REPORT_FILE = "report.html"
ENVIRONMENT_FILE = "environment.json"
COMPARE_JSON, COMPARE_TABLE = "compare.json", "compare.md"
"""The files ``experiment.compare`` writes into a comparison directory."""
PACKAGES = ("torch", "transformers", "peft", "flwr", "fedpeft")
STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1300px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;padding-top:.6em}nav a{margin-right:1em}
table{border-collapse:collapse;margin:.6em 0;font-size:.85em}td,th{border:1px solid #ccc;padding:3px 7px;
text-align:right}th{background:#f1f3f5}td:first-child,th:first-child{text-align:left;white-space:nowrap}
pre{background:#f6f8fa;padding:.8em;overflow-x:auto;font-size:.8em}.note{color:#6c4a00;background:#fff8e1;
padding:.4em .8em;border-left:4px solid #f0b400}img{max-width:100%;margin:.4em .6em .4em 0;vertical-align:top}
.fig{display:flex;flex-wrap:wrap;align-items:flex-start}.big{font-size:1.25em;font-weight:600}
pre.config{columns:3 22em}.card{margin-right:1.5em}.card img{max-width:420px}"""
NOT_SHOWN = (KeyError, TypeError, ValueError, IndexError, AttributeError, ZeroDivisionError, OSError, FedpeftError)
"""What malformed or partial records raise while a section is built; the section becomes a note."""


class ReportError(FedpeftError):
    """A path ``fedpeft report`` cannot make a page of, or a page it cannot write."""


def write_report(path: Path, out: Path | None = None) -> Path:
    """Write the page for ``path`` (a run or comparison directory) to ``out`` (default ``path/report.html``)."""
    path = Path(path)
    kind = directory_kind(path)
    out = Path(out) if out is not None else path / REPORT_FILE
    if out.is_dir():
        raise ReportError(f"--out {out} is a directory; give the page's file name, e.g. {out / REPORT_FILE}")
    if kind == "run":
        page = run_page(path)
    else:
        from fedpeft.reporting.compare_report import compare_page  # it builds on this module's page pieces

        page = compare_page(path, out.parent)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, page)
    except OSError as err:
        raise ReportError(f"cannot write the report to {out}: {err.strerror or err}; choose another --out") from None
    return out


def directory_kind(path: Path) -> str:
    """``"compare"`` (compare.json, or the entry runs of a comparison stopped before its first one finished) or
    ``"run"`` (any of config.yaml, metrics.jsonl, summary.json); anything else is a :class:`ReportError`."""
    expected = (
        f"expected a run directory (with {rd.CONFIG_FILE}, {rd.METRICS_FILE} or {rd.SUMMARY_FILE}) or a "
        f"comparison directory written by fedpeft compare (with {COMPARE_JSON})"
    )
    if not path.is_dir():
        raise ReportError(f"{path} {'is not a directory' if path.exists() else 'does not exist'}; {expected}")
    if (path / COMPARE_JSON).is_file() or entry_runs(path):
        return "compare"
    if any((path / name).is_file() for name in (rd.CONFIG_FILE, rd.METRICS_FILE, rd.SUMMARY_FILE)):
        return "run"
    inner = sorted(p.parent for p in path.glob(f"*/{rd.CONFIG_FILE}"))
    hint = f" (it holds run directories: give one, e.g. {inner[0]})" if inner else ""
    raise ReportError(f"{path} is neither kind of directory{hint}; {expected}")


def entry_runs(path: Path) -> list[Path]:
    """The run directories of a comparison's entries: ``runs/<entry>/<run>`` (each holding a config.yaml)."""
    return sorted(p.parent for p in path.glob(f"runs/*/*/{rd.CONFIG_FILE}"))


# ---- page pieces ----


def esc(value: Any) -> str:
    return html.escape(str(value))


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def number(value: Any) -> str:
    """Integers with thousands separators, floats to 4 decimals (1 from 100 up), None as '-', text escaped."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return esc(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:,.1f}" if abs(value) >= 100 else f"{value:.4f}"


def table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{number(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def figure(draw: Callable[..., None], *args: Any, alt: str) -> str:
    """Draw one ``reporting.plots`` figure into memory and embed it as a PNG data URI."""
    buffer: IO[bytes] = io.BytesIO()
    draw(*args, buffer)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def section(sections: list[tuple[str, str, str]], anchor: str, title: str, build: Callable[[], str]) -> None:
    try:
        body = build()
    except NOT_SHOWN as err:
        body = note(f"could not be shown from the recorded files: {type(err).__name__}: {err}")
    sections.append((anchor, title, body))


def render(title: str, intro: str, sections: list[tuple[str, str, str]]) -> str:
    nav = "".join(f'<a href="#{a}">{esc(t)}</a>' for a, t, _ in sections)
    body = "".join(f'<section id="{a}"><h2>{esc(t)}</h2>{b}</section>' for a, t, b in sections)
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f"<style>{STYLE}</style></head><body><h1>{esc(title)}</h1>{intro}<nav>{nav}</nav>{body}</body></html>\n"
    )


# ---- environment ----


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment_now() -> dict[str, Any]:
    """Package versions, Python, CPU and GPUs of this process (what a run can write to environment.json)."""
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    import torch

    gpus = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    )
    return {
        "packages": versions,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpus": gpus,
    }


def environment_section(recorded: dict[str, Any] | None) -> str:
    env, origin = (recorded, "recorded by the run") if recorded else (environment_now(), "recorded at report time")
    rows = [[f"{name}", version] for name, version in env.get("packages", {}).items()]
    rows += [["python", env.get("python")], ["platform", env.get("platform")], ["CPU", env.get("cpu")]]
    rows += [["CPU cores", env.get("cpu_count")], ["GPU", ", ".join(env.get("gpus") or []) or "none"]]
    why = "" if recorded else " (the run directory holds no record of its environment)"
    return f"<p>{esc(origin + why)}</p>" + table(["", "value"], rows)


# ---- a run directory ----


def read_run(path: Path) -> dict[str, Any]:
    """Whatever the run directory holds, with a note per piece that is missing or unreadable."""
    run: dict[str, Any] = {"path": path, "notes": [], "records": [], "summary": None, "partition": None}
    try:
        run["records"] = rd.MetricsLog(path / rd.METRICS_FILE).read()
    except rd.RunDirError as err:
        run["notes"].append(str(err))
    if not (path / rd.METRICS_FILE).is_file():
        run["notes"].append(f"{rd.METRICS_FILE} is missing: the run stopped before its first evaluation")
    for key, name in (("summary", rd.SUMMARY_FILE), ("partition", rd.PARTITION_FILE), ("env", ENVIRONMENT_FILE)):
        try:
            run[key] = rd.read_json(path / name) if (path / name).is_file() else None
        except (OSError, ValueError) as err:
            run["notes"].append(f"{name} cannot be read: {err}")
            run[key] = None
        if run[key] is not None and not isinstance(run[key], dict):
            run["notes"].append(f"{name} is not a JSON object; left out")
            run[key] = None
    if run["summary"] is None:
        run["notes"].append(f"{rd.SUMMARY_FILE} is missing: the run is still going or was killed before it finished")
    config = path / rd.CONFIG_FILE
    run["config_text"] = config.read_text(errors="replace") if config.is_file() else None
    run["config"] = {}
    if run["config_text"] is not None:
        import yaml

        try:
            loaded = yaml.safe_load(run["config_text"])
            run["config"] = loaded if isinstance(loaded, dict) else {}
        except yaml.YAMLError as err:
            run["notes"].append(f"{rd.CONFIG_FILE} is not YAML: {err}")
    run["rounds"] = sorted((r for r in run["records"] if r.get("type") == "round"), key=lambda r: r.get("round", 0))
    run["clients"] = [r for r in run["records"] if r.get("type") == "client"]
    evals = [r for r in run["rounds"] if r.get("eval")]
    run["metric"] = headline_metric(evals[-1]["eval"]) if evals else "loss"
    return run


KEYS = (("fl", "strategy"), ("peft", "method"), ("model", "name"))


def setting(run: dict[str, Any], group: str, key: str) -> str:
    return str((run["config"].get(group) or {}).get(key, "unknown"))


def run_page(path: Path) -> str:
    run = read_run(path)
    summary, metric, strategy = run["summary"] or {}, run["metric"], setting(run, "fl", "strategy")
    intro = "".join(note(n) for n in run["notes"])
    if summary.get("error"):
        intro += note(f"the run stopped with an error: {summary['error']}")
    sections: list[tuple[str, str, str]] = []
    section(sections, "headline", "Headline", lambda: headline_section(run))
    section(sections, "rounds", f"{metric} and loss per round", lambda: rounds_section(run))
    section(sections, "bytes", "Bytes against quality", lambda: bytes_section(run))
    section(sections, "time", "Time per round", lambda: time_section(run))
    section(sections, "memory", "Peak memory", lambda: memory_section(summary))
    section(sections, "partition", "Partition", lambda: partition_section(run["partition"]))
    section(sections, "mixing", "Mixing matrix", lambda: mixing_section(run["rounds"], strategy))
    section(sections, "clients", "Per-client metrics", lambda: clients_section(run))
    text = run["config_text"]
    config = note(f"{rd.CONFIG_FILE} is missing") if text is None else f'<pre class="config">{esc(text)}</pre>'
    section(sections, "config", "Configuration", lambda: config)
    recorded = (summary.get("environment") if isinstance(summary.get("environment"), dict) else None) or run["env"]
    section(sections, "environment", "Environment", lambda: environment_section(recorded))
    title = f"fedpeft run {path.name} (recipe {run['config'].get('recipe', summary.get('recipe', 'unknown'))})"
    return render(title, f"<p>{esc(path.resolve())}</p>{intro}", sections)


def headline_section(run: dict[str, Any]) -> str:
    summary, metric, rounds = run["summary"] or {}, run["metric"], run["rounds"]
    evals = [r for r in rounds if r.get("eval") and metric in r["eval"]]
    if not evals:
        return note("no evaluation recorded yet: the run stopped before round 1, or never evaluates (eval.every=0)")
    first, last = evals[0], evals[-1]
    values = [r["eval"][metric] for r in evals if r["round"] > 0] or [last["eval"][metric]]  # as compare's best
    best = max(values) if metric != "loss" else min(values)
    megabytes = sum(r.get("bytes_up", 0) + r.get("bytes_down", 0) for r in rounds) / 1e6
    big = f"test {metric} {number(last['eval'][metric])} after round {last['round']} (round {first['round']}: "
    big += f"{number(first['eval'][metric])}; best {number(best)}) for {megabytes:.3f} MB exchanged"
    done = f"{summary.get('rounds_completed', last['round'])} of {setting(run, 'fl', 'rounds')}"
    rows = [
        ["status", summary.get("status", "unknown (no summary.json)")],
        ["strategy / PEFT method / model", " / ".join(setting(run, *k) for k in KEYS)],
        ["rounds completed", done],
        ["final test loss", last["eval"].get("loss")],
        ["seconds in rounds", sum(r.get("seconds", 0.0) for r in rounds)],
        ["trainable parameters", summary.get("trainable_parameters")],
    ]
    return f'<p class="big">{esc(big)}</p>' + table(["", "value"], rows)


def series(rounds: list[dict[str, Any]], field: str, key: str) -> dict[str, list[tuple[int, float]]]:
    """Per client, ``(round, record[field][client][key])`` over the rounds that recorded it."""
    out: dict[str, list[tuple[int, float]]] = {}
    for r in rounds:
        for client, values in (r.get(field) or {}).items():
            if key in values:
                out.setdefault(client, []).append((r["round"], values[key]))
    return out


def rounds_section(run: dict[str, Any]) -> str:
    rounds, metric = run["rounds"], run["metric"]
    if not rounds:
        return note("no rounds recorded: the run was interrupted before its first evaluation")
    figs = [figure(plots.plot_losses, rounds, alt="train and test loss per round")]
    for key in dict.fromkeys((metric, "loss")):
        glob = [(r["round"], r["eval"][key]) for r in rounds if r.get("eval") and key in r["eval"]]
        clients, what = series(rounds, "client_eval", key), "client-validation"
        if not clients and key == "loss":  # no client evaluation: each client's train loss in its rounds
            what = "each client's train"
            for c in run["clients"]:
                clients.setdefault(f"client-{c['client']}", []).append((c["round"], c["train_loss"]))
        title = f"test {key} (global, bold) and {what} {key}"
        figs.append(figure(plots.plot_per_client, glob, clients, key, title, alt=f"{key} per round per client"))
        if not clients:
            figs.append(note(f"no per-client {key} recorded"))
    header = ["round", "clients", "train loss", f"test {metric}", "test loss", "MB", "seconds"]
    rows = [[r["round"], ", ".join(map(str, r.get("clients", []))) or "-", r.get("train_loss")] for r in rounds]
    for row, r in zip(rows, rounds, strict=True):
        evaluation = r.get("eval") or {}
        megabytes = (r.get("bytes_up", 0) + r.get("bytes_down", 0)) / 1e6
        row += [evaluation.get(metric), evaluation.get("loss"), megabytes, r.get("seconds")]
    return f'<div class="fig">{"".join(figs)}</div>' + table(header, rows)


def quality_by_bytes(rounds: list[dict[str, Any]], metric: str) -> list[tuple[int, int, float]]:
    """``(round, bytes exchanged up to and including it, test metric)`` for each evaluated round."""
    total, points = 0, []
    for r in rounds:
        total += r.get("bytes_up", 0) + r.get("bytes_down", 0)
        if r.get("eval") and metric in r["eval"]:
            points.append((r["round"], total, r["eval"][metric]))
    return points


def bytes_section(run: dict[str, Any]) -> str:
    rounds, metric = run["rounds"], run["metric"]
    points = quality_by_bytes(rounds, metric)
    if not points:
        return note("no evaluated round recorded yet")
    total = sum(r.get("bytes_up", 0) + r.get("bytes_down", 0) for r in rounds)
    text = f"<p>{total / 1e6:.3f} MB exchanged (up + down) over the recorded rounds; round 0 is before training.</p>"
    if total == 0:
        text += note(f"strategy {setting(run, 'fl', 'strategy')} exchanged nothing: every point sits at 0 MB")
    return text + figure(plots.plot_bytes_quality_curve, points, metric, alt=f"{metric} against cumulative MB")


def time_section(run: dict[str, Any]) -> str:
    trained = [(r["round"], r["seconds"]) for r in run["rounds"] if r["round"] > 0 and "seconds" in r]
    if not trained:
        return note("no trained round recorded yet")
    clients = [(c["round"], c["seconds"]) for c in run["clients"] if "seconds" in c]
    mean = sum(s for _, s in trained) / len(trained)
    summary = run["summary"] or {}
    wall = summary.get("wall_seconds_this_process")
    text = f"{len(trained)} rounds, {mean:.2f} s per round on average" + (
        f"; {wall:.1f} s of wall time in the last process" if wall else ""
    )
    return f"<p>{esc(text)}</p>" + figure(plots.plot_round_times, trained, clients, alt="seconds per round")


def memory_section(summary: dict[str, Any]) -> str:
    if not summary:
        return note(f"not recorded: {rd.SUMMARY_FILE} is missing (it is written when the run ends)")
    gpu = summary.get("peak_gpu_mb")
    rows = [
        ["peak resident memory (MB, whole process: Python, torch, model)", summary.get("peak_rss_mb")],
        ["peak GPU memory allocated by torch (MB)", "no GPU used" if gpu is None else gpu],
        [
            "trainable / total parameters",
            f"{number(summary.get('trainable_parameters'))} / {number(summary.get('total_parameters'))} ({number(summary.get('trainable_percent'))}%)",
        ],
    ]
    return table(["", "value"], rows)


def partition_section(partition: dict[str, Any] | None) -> str:
    if not partition:
        return note(f"not recorded: {rd.PARTITION_FILE} is missing")
    sizes = partition.get("clients") or {}
    lead = f"{partition.get('partition', 'unknown')} partition of {number(partition.get('rows_used'))} rows into "
    lead += f"{len(sizes)} clients; {number(partition.get('test_rows'))} test rows"
    rows = [[c, sizes[c].get("train"), sizes[c].get("val")] for c in sorted(sizes, key=plots.client_order)]
    categories = partition.get("categories")
    heatmap = (
        figure(plots.plot_partition_heatmap, categories, alt="rows per client and category")
        if categories
        else note("no category table recorded (the clients keep their own files)")
    )
    return f"<p>{esc(lead)}</p>{heatmap}" + table(["client", "train rows", "val rows"], rows)


def mixing_section(rounds: list[dict[str, Any]], strategy: str) -> str:
    mixed = [r for r in rounds if r.get("mixing")]
    if not mixed:
        return note(f"not recorded: strategy {strategy} does not mix (only personalised strategies record W)")
    last = mixed[-1]
    weights, clients, rnd = last["mixing"], last["clients"], last["round"]
    return figure(plots.plot_mixing_matrix, weights, clients, rnd, alt=f"mixing matrix, round {rnd}")


CLIENT_COLUMNS = "client|train rows|rounds trained|examples trained|last train loss|{m} round {a}|{m} round {b}|"
CLIENT_COLUMNS += "client-val loss round {b}|own test split {t}|MB|seconds training"


def clients_section(run: dict[str, Any]) -> str:
    rounds, metric = run["rounds"], run["metric"]
    sizes = (run["partition"] or {}).get("clients") or {}
    evals = [r for r in rounds if r.get("client_eval")]
    tests = [r for r in rounds if r.get("client_test")]
    trained: dict[str, list[dict[str, Any]]] = {}
    for c in run["clients"]:
        trained.setdefault(f"client-{c['client']}", []).append(c)
    names = sorted({*sizes, *trained, *(c for r in evals for c in r["client_eval"])}, key=plots.client_order)
    if not names:
        return note("no client recorded yet")
    first, last = (evals[0]["client_eval"], evals[-1]["client_eval"]) if evals else ({}, {})
    own_test = tests[-1]["client_test"] if tests else {}
    rows = []
    for name in names:
        mine, val0, val1 = trained.get(name, []), first.get(name) or {}, last.get(name) or {}
        examples, loss = sum(c.get("examples", 0) for c in mine), mine[-1]["train_loss"] if mine else None
        rows.append([name, (sizes.get(name) or {}).get("train"), len(mine), examples, loss, val0.get(metric)])
        megabytes = sum(c.get("bytes_up", 0) + c.get("bytes_down", 0) for c in mine) / 1e6
        rows[-1] += [val1.get(metric), val1.get("loss"), (own_test.get(name) or {}).get(metric), megabytes]
        rows[-1].append(sum(c.get("seconds", 0.0) for c in mine))
    a, b = (evals[0]["round"], evals[-1]["round"]) if evals else ("-", "-")
    header = CLIENT_COLUMNS.format(m=f"client-val {metric}", t=metric, a=a, b=b).split("|")
    if not evals:
        return note("no per-client evaluation recorded (eval.clients=false)") + table(header, rows)
    bars = {f"client-val, round {a}": first, f"client-val, round {b}": last}
    if tests:
        bars[f"own test split, round {tests[-1]['round']}"] = own_test
    values = {label: {c: m[metric] for c, m in by.items() if metric in m} for label, by in bars.items()}
    return figure(plots.plot_client_bars, values, metric, alt=f"{metric} per client") + table(header, rows)
