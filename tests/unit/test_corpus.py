"""Harvesting functions from a small fake standard library with known contents."""

from fedpeft.data.stdlib_corpus import corpus_report, harvest

ALPHA = '''
def add(a, b):
    """Return a plus b."""
    # the sum
    return a + b


def undocumented(x):
    return x


class Box:
    def get(self, key, default=None):
        """Look up key."""
        value = self.data.get(key)
        return default if value is None else value
'''


def make_stdlib(root):
    (root / "alpha.py").write_text(ALPHA)
    (root / "beta").mkdir()
    (root / "beta" / "__init__.py").write_text("")
    (root / "beta" / "inner.py").write_text(ALPHA)  # exact duplicates are dropped
    (root / "test").mkdir()
    (root / "test" / "test_x.py").write_text(ALPHA.replace("a + b", "a - b"))
    (root / "broken.py").write_text("def (:\n")


def test_harvest_extracts_documented_functions_deterministically(tmp_path):
    make_stdlib(tmp_path)
    records = harvest(tmp_path)
    assert [r.qualname for r in records] == ["alpha.add", "alpha.Box.get"]
    add = records[0]
    assert add.module == "alpha" and add.signature == "def add(a, b):" and add.docstring == "Return a plus b."
    assert add.body == "# the sum\nreturn a + b"
    assert add.code.startswith('def add(a, b):\n    """Return a plus b."""')
    assert records[1].signature == "def get(self, key, default=None):"
    assert harvest(tmp_path) == records
    assert corpus_report(records) == {"alpha": 2}


def test_corpus_split_is_a_stable_function_of_the_qualified_name():
    from dataclasses import replace

    from fedpeft.data.stdlib_corpus import FunctionRecord, corpus_split

    rec = FunctionRecord("json", "json.decoder.JSONDecoder.decode", "def decode(self, s):", "d", "b", "c", "p", 1)
    moved = replace(rec, path="elsewhere.py", line=99, body="changed")
    assert corpus_split(rec) == corpus_split(moved)
    names = [FunctionRecord("m", f"m.f{i}", "", "", "", "", "", 0) for i in range(4000)]
    counts = {s: sum(corpus_split(r) == s for r in names) for s in ("train", "valid", "test")}
    assert 0.87 < counts["train"] / 4000 < 0.93 and 0.03 < counts["test"] / 4000 < 0.07


def test_text_tasks_build_prompt_response_pairs(tmp_path):
    from fedpeft.data.text_tasks import rows_for_task

    make_stdlib(tmp_path)
    records = harvest(tmp_path)
    instruction = rows_for_task("instruction", records, "alpaca")[0]
    assert "### Instruction:" in instruction.prompt and "def add(a, b):" in instruction.prompt
    assert "Return a plus b." in instruction.prompt and instruction.prompt.endswith("### Response:\n")
    assert instruction.response == "# the sum\nreturn a + b" and instruction.category == "alpha"
    completion = rows_for_task("completion", records, "alpaca")[0]
    assert completion.prompt == "" and completion.response == records[0].code


def test_first_sentence_of_a_docstring():
    from fedpeft.data.text_tasks import first_sentence

    assert first_sentence("Return x.  More text.\n\nSecond paragraph.") == "Return x."
    assert first_sentence("Split a line\n    into words, e.g. by spaces. Then stop.") == (
        "Split a line into words, e.g. by spaces."
    )
    assert first_sentence("No full stop at all") == "No full stop at all"


def test_code_to_text_rows_hide_the_docstring(tmp_path):
    from fedpeft.data.text_tasks import rows_for_task

    make_stdlib(tmp_path)
    row = rows_for_task("code_to_text", harvest(tmp_path), "alpaca")[0]
    assert row.response == "Return a plus b."
    assert "def add(a, b):\n    # the sum\n    return a + b" in row.prompt
    assert "Return a plus b" not in row.prompt
