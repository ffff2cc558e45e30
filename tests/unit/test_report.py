"""``fedpeft report`` on run and comparison directories written by the test (no training).

The synthetic directories hold the files a run and ``fedpeft compare`` write (config.yaml, metrics.jsonl with round
and client records, partition.json, summary.json; compare.json, compare.md, runs/). The page is parsed with the
standard library's HTML parser; each figure is decoded from its data URI and read back by PIL.
"""

from __future__ import annotations

import base64
import importlib.metadata
import io
import json
import random
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

import fedpeft.cli.report  # noqa: F401  (registers the command)
from fedpeft.cli import app
from fedpeft.reporting.report import ReportError, directory_kind, quality_by_bytes, write_report

RUN_SECTIONS = [
    "headline",
    "rounds",
    "bytes",
    "time",
    "memory",
    "partition",
    "mixing",
    "clients",
    "config",
    "environment",
]


class Page(HTMLParser):
    """Every tag with its attributes, the text of each <section> (less its heading), and the text of the page."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.sections: dict[str, str] = {}
        self.current: str | None = None
        self.in_heading = False
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attributes = {k: v or "" for k, v in attrs}
        self.tags.append((tag, attributes))
        if tag == "section":
            self.current = attributes["id"]
            self.sections[self.current] = ""
        self.in_heading = self.in_heading or tag == "h2"

    def handle_endtag(self, tag):
        if tag == "section":
            self.current = None
        self.in_heading = self.in_heading and tag != "h2"

    def handle_data(self, data):
        self.text.append(data)
        if self.current and not self.in_heading:
            self.sections[self.current] += data

    def images(self) -> list[dict[str, str]]:
        return [a for t, a in self.tags if t == "img"]


def write_run(
    root: Path, strategy: str = "fedavg", mixing: bool = False, rounds: int = 2, name: str = "run", seed: int = 0
) -> Path:
    """A finished run of 3 clients, each training every round, with client evaluation and a category table."""
    rng = random.Random(seed)
    path = root / name
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(
        f"recipe: default\nmodel:\n  name: builtin:micro\npeft:\n  method: lora\nfl:\n  clients: 3\n  rounds: {rounds}\n"
        f"  strategy: {strategy}\n"
    )
    clients = [f"client-{i}" for i in range(3)]
    records = []
    for rnd in range(rounds + 1):
        evaluation = {"loss": 4.0 - rnd * 0.5, "token_accuracy": 0.2 + rnd * 0.1, "tokens": 100}
        client_eval = {c: {"loss": rng.uniform(1, 4), "token_accuracy": rng.uniform(0, 1)} for c in clients}
        record = {"type": "round", "round": rnd, "eval": evaluation, "client_eval": client_eval, "client_test": {}}
        if rnd:
            up = [rng.randrange(1000, 5000) for _ in clients]
            for i, b in enumerate(up):
                records.append(
                    {"type": "client", "round": rnd, "client": i, "examples": 10 + i, "steps": 2,
                     "train_loss": rng.uniform(1, 4), "bytes_up": b, "bytes_down": b, "seconds": rng.uniform(0.1, 1)}
                )  # fmt: skip
            record |= {"clients": [0, 1, 2], "examples": 33, "train_loss": rng.uniform(1, 4)}
            record |= {"bytes_up": sum(up), "bytes_down": sum(up), "seconds": rng.uniform(1, 2)}
            if mixing:
                rows = [[rng.random() for _ in clients] for _ in clients]
                record["mixing"] = [[w / sum(row) for w in row] for row in rows]
        records.append(record)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    categories = {c: {"json": 3 + i, "os": 5 - i, "re": 2 * i} for i, c in enumerate(clients)}
    partition = {"partition": "dirichlet", "rows_used": 60, "test_rows": 12, "categories": categories}
    partition["clients"] = {c: {"train": 10 + i, "val": 2} for i, c in enumerate(clients)}
    (path / "partition.json").write_text(json.dumps(partition))
    summary = {"recipe": "default", "status": "completed", "rounds_completed": rounds, "peak_rss_mb": 812.5}
    summary |= {"peak_gpu_mb": None, "trainable_parameters": 4352, "total_parameters": 31072, "trainable_percent": 14.0}
    (path / "summary.json").write_text(json.dumps(summary))
    return path


def read_page(path: Path) -> tuple[str, Page]:
    text = path.read_text(encoding="utf-8")
    return text, Page(text)


def assert_images_decode(page: Page, expected: int) -> None:
    images = page.images()
    assert len(images) == expected
    for img in images:
        prefix = "data:image/png;base64,"
        assert img["src"].startswith(prefix), img["src"][:60]
        data = base64.b64decode(img["src"][len(prefix) :], validate=True)
        with Image.open(io.BytesIO(data)) as picture:
            assert picture.format == "PNG"
            picture.load()
            assert picture.width > 0 and picture.height > 0
        assert img["alt"]


def assert_self_contained(text: str, page: Page) -> None:
    assert "<script" not in text.lower() and "<link" not in text.lower() and "@import" not in text
    assert "url(" not in text.replace("data:image", "")
    for tag, attributes in page.tags:
        for key in ("src", "href", "action", "srcset"):
            value = attributes.get(key)
            if value is None:
                continue
            assert "://" not in value and not value.startswith("//"), (tag, key, value)
            if key == "src":
                assert value.startswith("data:image/png;base64,")


def test_run_page_has_every_section_with_the_recorded_figures(tmp_path: Path):
    run = write_run(tmp_path)
    out = write_report(run)
    assert out == run / "report.html"
    text, page = read_page(out)
    assert list(page.sections) == RUN_SECTIONS
    assert "could not be shown" not in text
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rounds = [r for r in records if r["type"] == "round"]
    # headline: the last round's metric and the bytes of every round, as recorded
    megabytes = sum(r.get("bytes_up", 0) + r.get("bytes_down", 0) for r in rounds) / 1e6
    assert f"token_accuracy {rounds[-1]['eval']['token_accuracy']:.4f} after round 2" in page.sections["headline"]
    assert f"{megabytes:.3f} MB exchanged" in page.sections["headline"]
    # the mixing section of a strategy that does not mix is a one-line note
    assert (
        page.sections["mixing"].strip()
        == "not recorded: strategy fedavg does not mix (only personalised strategies record W)"
    )
    # per-client table: examples trained summed over the client's records
    for i in range(3):
        examples = sum(r["examples"] for r in records if r["type"] == "client" and r["client"] == i)
        assert f"client-{i}" in page.sections["clients"] and str(examples) in page.sections["clients"]
    assert "peak resident memory" in page.sections["memory"] and "812.5" in page.sections["memory"]
    assert "strategy: fedavg" in page.sections["config"]
    # losses, metric per client, loss per client, bytes/quality, time, partition, per-client bars
    assert_images_decode(page, 7)
    assert_self_contained(text, page)


def test_personalised_run_shows_its_last_mixing_matrix(tmp_path: Path):
    run = write_run(tmp_path, strategy="trust", mixing=True, rounds=3)
    text, page = read_page(write_report(run))
    assert "not recorded" not in page.sections["mixing"]
    mixing = [a for a in page.images() if a["alt"].startswith("mixing matrix")]
    assert [a["alt"] for a in mixing] == ["mixing matrix, round 3"]
    assert_images_decode(page, 8)


def test_quality_by_bytes_accumulates_every_round():
    rounds = [
        {"round": 0, "eval": {"bleu": 0.1}},
        {"round": 1, "bytes_up": 10, "bytes_down": 5, "eval": {"bleu": 0.2}},
        {"round": 2, "bytes_up": 7, "bytes_down": 7},  # not evaluated: its bytes still count
        {"round": 3, "bytes_up": 1, "bytes_down": 2, "eval": {"bleu": 0.4}},
    ]
    assert quality_by_bytes(rounds, "bleu") == [(0, 0, 0.1), (1, 15, 0.2), (3, 32, 0.4)]


def test_everything_read_from_disk_is_escaped(tmp_path: Path):
    run = write_run(tmp_path, strategy="<script>alert(1)</script>")
    config = run / "config.yaml"
    config.write_text(config.read_text() + "# <img src=https://example.com/x.png> & more\n")
    text, page = read_page(write_report(run))
    assert "<script>alert(1)</script>" not in text and "<img src=https" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<img src=https://example.com/x.png> & more" in page.sections["config"]  # shown, as text
    assert_self_contained(text, page)


def test_a_run_interrupted_before_round_one_degrades_to_notes(tmp_path: Path):
    run = write_run(tmp_path)
    (run / "metrics.jsonl").unlink()
    (run / "summary.json").unlink()
    text, page = read_page(write_report(run))
    assert list(page.sections) == RUN_SECTIONS
    assert "metrics.jsonl is missing" in text and "summary.json is missing" in text
    assert "no evaluation recorded yet" in page.sections["headline"]
    assert "no rounds recorded" in page.sections["rounds"]
    assert "not recorded: summary.json is missing" in page.sections["memory"]
    assert_images_decode(page, 1)  # the partition heatmap, recorded before training


def test_an_old_run_without_partition_and_a_torn_log(tmp_path: Path):
    run = write_run(tmp_path)
    (run / "partition.json").unlink()
    with (run / "metrics.jsonl").open("a") as fh:
        fh.write('{"type": "round", "rou')  # killed mid-write
    text, page = read_page(write_report(run))
    assert "not recorded: partition.json is missing" in page.sections["partition"]
    assert "could not be shown" not in text
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(["not json", *lines]) + "\n")  # corrupt, not torn
    text, page = read_page(write_report(run))
    assert "line 1 is not JSON" in text
    assert "no rounds recorded" in page.sections["rounds"]


def test_environment_recorded_by_the_run_or_at_report_time(tmp_path: Path):
    run = write_run(tmp_path)
    _, page = read_page(write_report(run))
    assert "recorded at report time" in page.sections["environment"]
    assert importlib.metadata.version("torch") in page.sections["environment"]
    recorded = {"packages": {"torch": "9.9.9-recorded"}, "python": "CPython 3.99", "cpu": "Test CPU", "gpus": ["G1"]}
    (run / "environment.json").write_text(json.dumps(recorded))
    _, page = read_page(write_report(run))
    env = page.sections["environment"]
    assert "recorded by the run" in env and "9.9.9-recorded" in env and "Test CPU" in env and "G1" in env


def write_compare(root: Path, seeds: list[int] | None) -> Path:
    """A comparison of fedavg and local, on each seed when ``seeds``: runs/, compare.json, compare.md."""
    path = root / "cmp"
    rows = []
    for seed in seeds or [None]:
        for label in ("fedavg", "local"):
            name = label if seed is None else f"{label}-seed{seed}"
            run = write_run(path / "runs" / name, name="default-20260101-000000", seed=seed or 0)
            curve = [[r, 0.2 + 0.1 * r + (seed or 0) * 0.01] for r in range(3)]
            megabytes = 0.0 if label == "local" else 0.05
            row = {"strategy": label, "run_dir": str(run), "metric": "token_accuracy", "final": curve[-1][1]}
            row |= {"best": curve[-1][1], "final_loss": 3.0, "megabytes": megabytes, "peak_rss_mb": 700.0}
            row |= {"seconds": 1.5, "curve": curve} | ({} if seed is None else {"seed": seed})
            rows.append(row)
    data = {"recipe": "default", "overrides": ["fl.rounds=2"], "rows": rows}
    if seeds:
        data |= {"seeds": seeds, "reference": "fedavg"}
    (path / "compare.json").write_text(json.dumps(data))
    (path / "compare.md").write_text(
        "| entry | final token_accuracy |\n| --- | --- |\n| fedavg | 0.4000 |\n| local | 0.4000 |\n\nSeeds <0>.\n"
    )
    return path


@pytest.mark.parametrize("seeds", [None, [0, 1]])
def test_compare_page_table_curves_bytes_and_entries(tmp_path: Path, seeds):
    path = write_compare(tmp_path, seeds)
    out = tmp_path / "pages" / "cmp.html"
    text, page = read_page(write_report(path, out))
    assert list(page.sections) == ["table", "curves", "bytes", "entries"]
    assert "could not be shown" not in text
    table = text[text.index('<section id="table">') : text.index('<section id="curves">')]
    assert table.count("<th>") == 2 and table.count("<td>") == 4
    assert "fedavg0.4000local0.4000" in page.sections["table"].replace(" ", "")
    assert "Seeds <0>." in page.sections["table"]
    runs = len(seeds or [None]) * 2
    # the band plot, the bytes/quality plot and each entry run's loss plot
    assert_images_decode(page, 2 + runs)
    links = [a["href"] for t, a in page.tags if t == "a" and not a["href"].startswith("#")]
    assert len(links) == runs
    for href in links:  # relative to the page, and pointing at the entries' run directories
        assert (out.parent / href / "config.yaml").is_file()
    assert_self_contained(text, page)


def test_a_comparison_stopped_before_its_first_entry_finished(tmp_path: Path):
    path = write_compare(tmp_path, None)
    (path / "compare.json").unlink()
    (path / "compare.md").unlink()
    assert directory_kind(path) == "compare"
    text, page = read_page(write_report(path))
    assert "compare.json is missing" in text
    assert "no entry has finished yet" in page.sections["curves"]
    assert page.sections["entries"].count("not in compare.json") == 2


def test_a_path_of_neither_kind_is_an_error_naming_it(tmp_path: Path):
    for bad in (tmp_path / "missing", tmp_path):
        with pytest.raises(ReportError, match=f"{bad}.*expected a run directory.*or a comparison directory"):
            write_report(bad)
    write_run(tmp_path / "out", name="default-1")
    with pytest.raises(ReportError, match="holds run directories: give one"):
        write_report(tmp_path / "out")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ReportError, match="is not a directory"):
        write_report(tmp_path / "file.txt")


def test_cli_prints_the_page_path_and_reports_errors(tmp_path: Path):
    run = write_run(tmp_path)
    result = CliRunner().invoke(app, ["report", str(run), "--out", str(tmp_path / "r.html")])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(tmp_path / "r.html")
    assert (tmp_path / "r.html").read_text().startswith("<!DOCTYPE html>")
    result = CliRunner().invoke(app, ["report", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "error:" in result.output and "nope" in result.output
