"""The run directory's files read back strictly, and the output directory checked before a run starts."""

from __future__ import annotations

import os

import pytest

from fedpeft.reporting.run_dir import MetricsLog, RunDirError, check_output_dir, new_run_dir


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"round": 0}\ngarbage\n{"round": 1}\n', r"m.jsonl: line 2 is not JSON"),
        ('{"round": 0}\n\n3\n{"round": 1}\n', r"m.jsonl: line 3 is not a metrics record"),
        ('{"round": "two"}\n{"round": 1}\n', r"m.jsonl: line 1 is not a metrics record"),
    ],
)
def test_a_damaged_log_is_a_run_dir_error_naming_the_line(tmp_path, text, problem):
    (tmp_path / "m.jsonl").write_text(text)
    with pytest.raises(RunDirError, match=problem):
        MetricsLog(tmp_path / "m.jsonl").read()


def test_an_unreadable_log_is_a_run_dir_error(tmp_path):
    (tmp_path / "m.jsonl").write_bytes(b'{"round": 0}\n\xff\n')
    with pytest.raises(RunDirError, match=r"m.jsonl cannot be read as JSON Lines: not UTF-8 text"):
        MetricsLog(tmp_path / "m.jsonl").read()
    (tmp_path / "d.jsonl").mkdir()
    with pytest.raises(RunDirError, match=r"d.jsonl cannot be read as JSON Lines: a directory"):
        MetricsLog(tmp_path / "d.jsonl").read()


def test_an_output_dir_that_cannot_hold_runs_is_refused_before_anything_loads(tmp_path):
    (tmp_path / "file").write_text("")
    check_output_dir(tmp_path / "new" / "deeper")  # made when the run starts
    with pytest.raises(RunDirError, match=r"output.dir='.*file' cannot hold run directories; set another"):
        check_output_dir(tmp_path / "file")
    with pytest.raises(RunDirError, match=r"cannot hold run directories \(.*file is a file\)"):
        check_output_dir(tmp_path / "file" / "runs")
    with pytest.raises(RunDirError, match=r"File name too long"):
        check_output_dir(tmp_path / ("x" * 300))
    assert sorted(os.listdir(tmp_path)) == ["file"]


def test_new_run_dir_reports_what_the_file_system_refuses(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(RunDirError, match=r"output.dir='.*file': cannot create .*file/default-"):
        new_run_dir(tmp_path / "file", "default")
    with pytest.raises(RunDirError, match=r"File name too long"):
        new_run_dir(tmp_path, "r" * 300)
