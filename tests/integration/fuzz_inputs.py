"""Seeded malformed input for ``test_fuzz_cli.py``: configs and recipe files, data files, damaged run directories.

Every :class:`Case` writes its files into a fresh directory and returns the ``fedpeft`` command line and the
words its error message must contain (the key or file at fault and, where there is one, what would be valid).
The cases come from ``random.Random(SEED)``, so every run of the suite tries the same inputs; another seed
explores others (``FEDPEFT_FUZZ_SEED``).

Only input that is wrong by an independent oracle is generated: a YAML text is kept only if PyYAML refuses it, a
wrong-typed value only if pydantic's type alone (not fedpeft's validators) refuses it, a truncated JSON file is
a strict prefix of an object, and so on.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import shutil
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from fedpeft.config.recipes import apply_overrides
from fedpeft.config.schema import RunConfig
from tests.integration.conftest import MICRO

SEED = int(os.environ.get("FEDPEFT_FUZZ_SEED", "20240601"))
FIXTURES = Path(__file__).parent.parent / "fixtures"
NEWEST = "checkpoints/round-0002"
"""The newest checkpoint of the module's completed run (2 rounds)."""


@dataclass(frozen=True)
class Runs:
    """Real run directories made once per module; resume cases damage a copy of one."""

    completed: Path
    """A completed micro run: 2 clients, 2 rounds, both round checkpoints kept."""
    other: Path
    """Another completed micro run with a different peft.r (its tensors have other shapes)."""


Build = Callable[[Path, "Runs | None"], tuple[list[str], list[str]]]
"""(case directory, the module's runs) -> (command line, words the error must contain)."""


@dataclass(frozen=True)
class Case:
    id: str
    build: Build


def _word(rng: random.Random, n: int = 6) -> str:
    return "".join(rng.choices(string.ascii_lowercase, k=n))


def _sets(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def micro_items(case_dir: Path) -> list[str]:
    """The MICRO overrides, writing under ``case_dir``: what a new run in a case is, apart from its defect."""
    return [*MICRO, f"output.dir={case_dir / 'runs'}"]


def run_command(case_dir: Path, items: list[str], recipe: str = "default") -> list[str]:
    """``fedpeft run`` of the micro recipe, then ``items`` (later --set win, so the defect is the last word)."""
    return ["run", recipe, "--quiet", *_sets([*micro_items(case_dir), *items])]


def set_key(data: dict[str, Any], key: str, value: Any) -> None:
    """``data[a][b] = value`` for the dotted key ``a.b``."""
    *sections, leaf = key.split(".")
    for section in sections:
        data = data.setdefault(section, {})
    data[leaf] = value


def _yaml_value(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...").strip()


# ---------------------------------------------------------------------------------------------------------
# Configuration keys: what each accepts, from the schema itself


def schema_fields() -> list[tuple[str, Any]]:
    """(dotted key, pydantic FieldInfo) of every leaf setting of :class:`RunConfig`."""
    out = []
    for section, info in RunConfig.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += [(f"{section}.{f.alias or name}", f) for name, f in ann.model_fields.items()]
        else:
            out.append((section, info))
    return out


SECTIONS = [
    name
    for name, f in RunConfig.model_fields.items()
    if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)
]
WRONG_TYPED = ["three", 1.5, [1, 2], {"k": 1}, True, 7, "", [["x"]], {"a": [1]}, -2.5]


def _type_accepts(annotation: Any, value: Any) -> bool:
    try:
        TypeAdapter(annotation).validate_python(value)
    except ValidationError:
        return False
    return True


def wrong_typed_value(rng: random.Random, annotation: Any) -> Any:
    """A value the field's type refuses (pydantic's coercion rules, nothing of fedpeft's)."""
    candidates = [v for v in WRONG_TYPED if not _type_accepts(annotation, v)]
    return rng.choice(candidates)


def out_of_range_value(rng: random.Random, info: Any) -> Any | None:
    """A value of the field's type outside a bound the schema declares (gt, ge, lt, le, max_length), or None."""
    integral = not _type_accepts(info.annotation, 0.5)
    options = []
    for bound in info.metadata:  # annotated_types' Gt, Ge, Lt, Le, MaxLen
        if (gt := getattr(bound, "gt", None)) is not None:
            options += [gt, gt - 1, gt - 10] if integral else [gt, gt - 0.5]
        elif (ge := getattr(bound, "ge", None)) is not None:
            options += [ge - 1, ge - 7] if integral else [ge - 0.25, ge - 3.5]
        elif (lt := getattr(bound, "lt", None)) is not None:
            options += [lt, lt + 1] if integral else [lt, lt + 0.5]
        elif (le := getattr(bound, "le", None)) is not None:
            options += [le + 1]
        elif (longest := getattr(bound, "max_length", None)) is not None:
            options += ["x" * (longest + 1 + rng.randrange(64))]
    options = [v for v in options if _type_accepts(info.annotation, v)]
    return rng.choice(options) if options else None


# Settings that are in range for their type but wrong for fedpeft (its own validators), with the key at fault.
SEMANTIC = [
    (["peft.r=0"], "peft.r"),
    (["peft.r=-4"], "peft.r"),
    (["fl.clients=0"], "fl.clients"),
    (["fl.clients=-3"], "fl.clients"),
    (["fl.fraction=0"], "fl.fraction"),
    (["fl.fraction=1.5"], "fl.fraction"),
    (["fl.fraction=-0.25"], "fl.fraction"),
    (["model.device=gpu"], "model.device"),
    (["model.device=cuda:x"], "model.device"),
    (["model.device=tpu:0"], "model.device"),
    (["fl.min_clients=5"], "fl.min_clients"),
    (["train.batch_size=6", "train.micro_batch_size=4"], "train.batch_size"),
    (["train.epochs=null", "train.max_steps=null"], "train.max_steps"),
    (["peft.client_ranks=[0]"], "peft.client_ranks"),
    (["peft.client_ranks=[99]"], "peft.client_ranks"),
    (["peft.client_ranks=[]"], "peft.client_ranks"),
    (["peft.method=ia3", "peft.client_ranks=[2]"], "peft.client_ranks"),
    (["peft.method=full", "model.quantization=8bit"], "model.quantization"),
    (["train.packing=true", "data.task=defect"], "train.packing"),
    (["train.packing=true", "peft.method=prompt"], "train.packing"),
    (["flower.secure_aggregation=true"], "flower.secure_aggregation"),
    (["fl.strategy=fedmagic"], "fl.strategy"),
    (["fl.strategy_args={bogus: 1}"], "fl.strategy_args"),
    (["fl.strategy=fedprox", "fl.strategy_args={mu: abc}"], "fl.strategy_args.mu"),
    (["data.partition=quantity", "data.quantity_range=[0.5, 0.2]"], "data.quantity_range"),
    (["data.modules=[no_such_module_x]"], "data.modules"),
    (["data.source=someone/unknown-dataset"], "data.source"),
    (["data.schema=no-such-schema", "data.source=rows.jsonl"], "data.schema"),
    (["model.name=/no/such/model/dir"], "model.name"),
    (["model.name=builtin:enormous"], "model.name"),
    (["model.name=~no_such_user_x/model"], "model.name"),
    (["data.source=~no_such_user_x/rows.jsonl", "data.schema=dolly"], "data.source"),
    (['model.name="a\\0b"'], "model.name"),
    (['recipe="run\\0name"'], "recipe"),
    (['output.dir="out\\0dir"'], "output.dir"),
    (["data.test_size=100000"], "data.test_size"),
    (["fl.clients=100000", "fl.fraction=0.001"], "fl.clients"),
    (["data.max_length=9"], "data.max_length"),
    (["peft.target_modules=[no_such_proj]"], "peft.target_modules"),
]


# ---------------------------------------------------------------------------------------------------------
# YAML text PyYAML refuses


def _yaml_breakers(rng: random.Random) -> list[Callable[[list[str]], list[str]]]:
    """Edits of a YAML file's lines; each may or may not make it invalid (the caller checks)."""

    def at(lines: list[str]) -> int:
        return rng.randrange(len(lines))

    def unclosed_flow(lines):
        i = at(lines)
        return [*lines[:i], f"{lines[i]} [{_word(rng)}, 1" if ":" in lines[i] else "[1, 2", *lines[i + 1 :]]

    def tab_indent(lines):
        i = at(lines)
        return [*lines[:i], "\t" + lines[i].lstrip() + ": 1", *lines[i + 1 :]]

    def unclosed_quote(lines):
        i = at(lines)
        return [*lines[:i], f'{_word(rng)}: "{_word(rng)}', *lines[i + 1 :]]

    def double_colon(lines):
        i = at(lines)
        return [*lines[:i], f"{_word(rng)}: a: b", *lines[i + 1 :]]

    def undefined_alias(lines):
        i = at(lines)
        return [*lines[:i], f"{_word(rng)}: *{_word(rng)}", *lines[i + 1 :]]

    def stray_bracket(lines):
        i = at(lines)
        return [*lines[:i], "]" + lines[i], *lines[i + 1 :]]

    def two_documents(lines):
        return [*lines, "---", f"{_word(rng)}: 1"]

    def bad_dedent(lines):
        i = at(lines)
        return [*lines[:i], "  " + lines[i], " " + _word(rng) + ": 2", *lines[i + 1 :]]

    def python_tag(lines):
        i = at(lines)
        return [*lines[:i], f"{_word(rng)}: !!python/object:os.system {{}}", *lines[i + 1 :]]

    return [
        unclosed_flow,
        tab_indent,
        unclosed_quote,
        double_colon,
        undefined_alias,
        stray_bracket,
        two_documents,
        bad_dedent,
        python_tag,
    ]


def broken_yaml(rng: random.Random, mapping: dict[str, Any]) -> str:
    """The YAML of ``mapping`` with one random edit that PyYAML refuses."""
    lines = yaml.safe_dump(mapping, sort_keys=False).splitlines()
    breakers = _yaml_breakers(rng)
    while True:
        text = "\n".join(rng.choice(breakers)(list(lines))) + "\n"
        try:
            yaml.safe_load(text)
        except yaml.YAMLError:
            return text


def non_utf8(rng: random.Random, text: str) -> bytes:
    """``text`` with bytes that are not UTF-8: a stray byte, a Latin-1 or cp1252 letter, or UTF-16."""
    kind = rng.choice(["byte", "latin-1", "cp1252", "utf-16"])
    if kind == "utf-16":
        return text.encode("utf-16")
    i = rng.randrange(len(text))
    if kind == "byte":
        raw = text.encode()
        return raw[:i] + rng.choice([b"\xff", b"\xfe", b"\xc0\xaf", b"\xed\xa0\x80", b"\x80", b"\xc3("]) + raw[i:]
    letter = rng.choice("éüñçø") if kind == "latin-1" else rng.choice("€œ…")
    quoted = text.replace(": ", f": {letter}", 1) if ": " in text else letter + text
    return quoted.encode(kind)


# ---------------------------------------------------------------------------------------------------------
# 1. configs and recipe files


def config_cases(rng: random.Random) -> list[Case]:
    cases: list[Case] = []
    fields = schema_fields()

    def add(kind: str, build: Build) -> None:
        cases.append(Case(f"{len(cases):03d}-{kind}", build))

    def recipe_file(text: str | bytes, use_run: bool, name: str) -> Build:
        def build(case_dir: Path, _: Runs | None) -> tuple[list[str], list[str]]:
            path = case_dir / name
            path.write_bytes(text.encode() if isinstance(text, str) else text)
            return (["run", str(path), "--quiet"] if use_run else ["config", str(path)]), [str(path)]

        return build

    def mapping_file(edit: Callable[[dict[str, Any]], None], use_run: bool, mentions: list[str]) -> Build:
        name = f"{_word(rng)}.yaml"

        def build(case_dir: Path, _: Runs | None) -> tuple[list[str], list[str]]:
            data = apply_overrides({"peft": {}}, micro_items(case_dir))
            edit(data)
            path = case_dir / name
            path.write_text(yaml.safe_dump(data, sort_keys=False))
            return (["run", str(path), "--quiet"] if use_run else ["config", str(path)]), mentions

        return build

    def with_sets(items: list[str], use_run: bool, mentions: list[str]) -> Build:
        def build(case_dir: Path, _: Runs | None) -> tuple[list[str], list[str]]:
            return (run_command(case_dir, items) if use_run else ["config", "default", *_sets(items)]), mentions

        return build

    def put(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
        return lambda data: set_key(data, key, value)

    # wrong types, in a recipe file or through --set
    for _ in range(30):
        key, info = rng.choice(fields)
        value = wrong_typed_value(rng, info.annotation)
        if rng.random() < 0.5:
            add("wrong-type-file", mapping_file(put(key, value), rng.random() < 0.5, [key]))
        else:
            add("wrong-type-set", with_sets([f"{key}={_yaml_value(value)}"], rng.random() < 0.5, [key]))
    for _ in range(4):
        section = rng.choice(SECTIONS)
        value = rng.choice([3, "text", [1, 2], True])
        add("section-not-mapping", mapping_file(put(section, value), rng.random() < 0.5, [section]))
    # unknown keys, top level and nested
    for _ in range(14):
        nested = rng.random() < 0.6
        key = f"{rng.choice(SECTIONS)}.{_word(rng)}" if nested else _word(rng)
        value = rng.choice([1, "x", [1], {"a": 1}, None])
        mentions = [key, "valid keys"]
        if rng.random() < 0.5:
            add("unknown-key-file", mapping_file(put(key, value), rng.random() < 0.5, mentions))
        else:
            add("unknown-key-set", with_sets([f"{key}={_yaml_value(value)}"], rng.random() < 0.5, mentions))
    # values out of range: the bounds the schema declares, then fedpeft's own rules
    bounded = [(k, f) for k, f in fields if out_of_range_value(random.Random(0), f) is not None]
    for _ in range(16):
        key, info = rng.choice(bounded)
        value = out_of_range_value(rng, info)
        if rng.random() < 0.5:
            add("out-of-range-file", mapping_file(put(key, value), rng.random() < 0.5, [key]))
        else:
            add("out-of-range-set", with_sets([f"{key}={_yaml_value(value)}"], rng.random() < 0.5, [key]))
    for items, key in SEMANTIC:
        add("invalid-setting", with_sets(items, True, [key]))
    # YAML syntax errors
    for _ in range(12):
        text = broken_yaml(rng, apply_overrides({}, MICRO))
        add("yaml-syntax", recipe_file(text, rng.random() < 0.5, f"{_word(rng)}.yaml"))
    # empty files and files that are not a mapping of sections
    empties = ["", "\n\n", "# only a comment\n", "---\n", "null\n", "~\n", "   \n"]
    for text in empties:
        add("empty-file", recipe_file(text, rng.random() < 0.5, f"{_word(rng)}.yaml"))
    for text in ["- a\n- b\n", "42\n", '"just a string"\n', "[fl, rounds]\n", "true\n"]:
        add("not-a-mapping", recipe_file(text, rng.random() < 0.5, f"{_word(rng)}.yml"))
    # a directory where the recipe file should be
    for _ in range(4):
        name = f"{_word(rng)}.{rng.choice(['yaml', 'yml'])}"
        use_run = rng.random() < 0.5

        def directory(case_dir: Path, _: Runs | None, name: str = name, use_run: bool = use_run):
            (case_dir / name).mkdir()
            (case_dir / name / "inner.yaml").write_text("fl: {rounds: 1}\n")
            args = ["run", str(case_dir / name), "--quiet"] if use_run else ["config", str(case_dir / name)]
            return args, [str(case_dir / name), "directory"]

        add("directory-recipe", directory)
    # recipes that do not exist
    for _ in range(6):
        if rng.random() < 0.5:
            name = rng.choice([_word(rng), f"default-{_word(rng, 3)}", "Default", "default.yaml", "modules "])
            add("unknown-recipe", with_sets_recipe(name, rng.random() < 0.5, [repr(name), "valid recipes"]))
        else:
            name = f"missing/{_word(rng)}.yaml"
            add("missing-recipe-file", with_sets_recipe(name, rng.random() < 0.5, [name, "does not exist"]))
    # bad --set syntax
    for _ in range(16):
        key, info = rng.choice(fields)
        kind = rng.choice(["no-equals", "no-key", "value-is-section", "section-is-value", "unparsable"])
        if kind == "no-equals":
            items, mentions = [key], ["key=value", key]
        elif kind == "no-key":
            items, mentions = [rng.choice(["=3", " =3", "=", "  = x"])], ["key=value"]
        elif kind == "value-is-section":
            items, mentions = [f"{key}.{_word(rng)}=1"], [key]
        elif kind == "section-is-value":
            section = rng.choice(SECTIONS)
            items, mentions = [f"{section}={rng.choice(['3', 'x', '[1]'])}"], [section]
        else:
            raw = rng.choice(["[1", "{a: 1", '"x', "'x", "{]", "a: b: c"])
            items, mentions = [f"{key}={raw}"], [key, "parse"]
        add(f"set-{kind}", with_sets(items, rng.random() < 0.5, mentions))
    # non-UTF-8 bytes in a recipe file
    for _ in range(8):
        text = yaml.safe_dump(apply_overrides({}, MICRO), sort_keys=False)
        add("non-utf8-file", recipe_file(non_utf8(rng, text), rng.random() < 0.5, f"{_word(rng)}.yaml"))
    return cases


def with_sets_recipe(recipe: str, use_run: bool, mentions: list[str]) -> Build:
    def build(case_dir: Path, _: Runs | None) -> tuple[list[str], list[str]]:
        return (run_command(case_dir, [], recipe) if use_run else ["config", recipe]), mentions

    return build


# ---------------------------------------------------------------------------------------------------------
# 2. data files given as data.source


@dataclass(frozen=True)
class Source:
    """A published schema with a fixture in it, and the kinds of its columns."""

    schema: str
    fixture: str
    task: str
    text: tuple[str, ...]
    """Columns that must hold a string."""
    tokens: tuple[str, ...] = ()
    """Columns that must hold a list of strings."""
    label: str | None = None
    label_kind: str = ""
    """'binary' (true/false, 0/1) or 'class' (an integer class id)."""

    @property
    def flat(self) -> bool:
        return not self.tokens


SOURCES = [
    Source("codexglue-defect", "codexglue_defect.jsonl", "defect", ("func", "project"), (), "target", "binary"),
    Source("codexglue-clone", "codexglue_clone.jsonl", "clone", ("func1", "func2"), (), "label", "binary"),
    Source("cola", "cola.csv", "text_classification", ("sentence",), (), "label", "class"),
    Source("dolly", "dolly.jsonl", "instruction", ("instruction", "response", "category")),
    Source("guanaco-commits", "guanaco_commits.jsonl", "instruction", ("prompt", "completion")),
    Source("codexglue-code-to-text", "codexglue_code_to_text.jsonl", "code_to_text", (), ("code_tokens",)),
    Source("codexglue-completion", "codexglue_completion.jsonl", "completion", (), ("code",)),
    Source("codexglue-search", "codexglue_search_adv.jsonl", "code_search", (), ("docstring_tokens", "code_tokens")),
]
COLUMNS = {
    "codexglue-defect": ("func", "target", "project"),
    "codexglue-clone": ("func1", "func2", "label"),
    "cola": ("sentence", "label"),
    "dolly": ("instruction", "context", "response", "category"),
    "guanaco-commits": ("prompt", "completion"),
    "codexglue-code-to-text": ("code_tokens", "docstring_tokens", "repo"),
    "codexglue-completion": ("code",),
    "codexglue-search": ("docstring_tokens", "code_tokens", "repo"),
}
"""Each published schema's columns (the CodeXGLUE, GLUE, Dolly and Guanaco datasets' own names)."""


def fixture_records(source: Source) -> list[dict[str, Any]]:
    """The fixture's rows, cut to the schema's columns plus an ``id``."""
    path = FIXTURES / source.fixture
    if path.suffix == ".csv":
        rows = [dict(r, label=int(r["label"])) for r in csv.DictReader(io.StringIO(path.read_text()))]
    else:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{"id": i, **{c: r[c] for c in COLUMNS[source.schema]}} for i, r in enumerate(rows)]


def encode(records: list[dict[str, Any]], fmt: str) -> bytes:
    """``records`` as a .jsonl, .json, .csv or .parquet file."""
    if fmt == ".jsonl":
        return "".join(json.dumps(r) + "\n" for r in records).encode()
    if fmt == ".json":
        return json.dumps(records).encode()
    if fmt == ".csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
        return out.getvalue().encode()
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(records), sink)
    return sink.getvalue()


def formats(source: Source) -> list[str]:
    return [".jsonl", ".json", ".csv", ".parquet"] if source.flat else [".jsonl", ".json", ".parquet"]


def data_command(
    case_dir: Path, path: Path | str, source: Source, extra: list[str] = (), schema: bool = True
) -> list[str]:
    items = [f"data.source={path}", f"data.task={source.task}", "data.test_size=4", "fl.rounds=1", *extra]
    return run_command(case_dir, [f"data.schema={source.schema}"] * schema + items)


def data_case(content: Callable[[], bytes], source: Source, fmt: str, mentions: list[str], extra=()) -> Build:
    """A case whose data.source is a file with ``content()``; ``{path}`` in ``mentions`` is its path."""
    name = f"rows-{source.schema}{fmt}"

    def build(case_dir: Path, _: Runs | None) -> tuple[list[str], list[str]]:
        path = case_dir / name
        path.write_bytes(content())
        return data_command(case_dir, path, source, list(extra)), [m.replace("{path}", str(path)) for m in mentions]

    return build


def _truncated(rng: random.Random, source: Source, fmt: str) -> Callable[[], bytes]:
    """The file cut where no parser can read it as complete: inside a JSON object or array, inside a CSV
    row's first field (its later columns go missing), anywhere in a Parquet file."""
    fraction = rng.random()

    def content() -> bytes:
        raw = encode(fixture_records(source), fmt)
        if fmt == ".jsonl":
            lines = raw.splitlines(keepends=True)
            i = int(fraction * len(lines))
            line = lines[i].rstrip(b"\n")
            return b"".join(lines[:i]) + line[: 1 + int(fraction * (len(line) - 2))]
        if fmt == ".csv":
            lines = raw.splitlines(keepends=True)
            i = 1 + int(fraction * (len(lines) - 1))
            return b"".join(lines[:i]) + lines[i][:1]
        return raw[: 1 + int(fraction * (len(raw) - 2))]

    return content


def _reencoded(rng: random.Random, source: Source, fmt: str) -> Callable[[], bytes]:
    kind = rng.choice(["latin-1", "utf-16", "cp1252", "utf-16-be"])
    letter = {"latin-1": "é", "cp1252": "€"}.get(kind, "ü")
    row_pick, col_pick = rng.random(), rng.random()

    def content() -> bytes:
        records = fixture_records(source)
        row = records[int(row_pick * len(records))]
        columns = list(source.text) or list(source.tokens)
        column = columns[int(col_pick * len(columns))]
        if column in source.text:
            row[column] = letter + row[column]
        else:
            row[column] = [letter, *row[column]]
        text = encode(records, fmt).decode()
        if fmt != ".csv":
            text = text.replace("\\u00e9", letter).replace("\\u20ac", letter).replace("\\u00fc", letter)
        return text.encode(kind)

    return content


def _ten_mb_line(rng: random.Random, source: Source, kind: str) -> Callable[[], bytes]:
    block = "".join(rng.choices(string.ascii_letters + " ", k=1024))
    pick = rng.random()

    def content() -> bytes:
        records = fixture_records(source)
        big = block * (10 * 1024)
        if kind == "garbage":
            lines = encode(records, ".jsonl").decode().splitlines(keepends=True)
            i = int(pick * len(lines))
            return "".join([*lines[:i], big + "\n", *lines[i:]]).encode()
        row = dict(records[0])
        column = (source.text or source.tokens)[0]
        if kind == "single-row":
            row[column] = big if column in source.text else big.split(" ")
            return encode([row], ".jsonl")
        row[column] = [7] * (len(big) // 3)  # a 10 MB list of numbers where text belongs
        return encode([*records[:5], row, *records[5:]], ".jsonl")

    return content


def _edited(source: Source, fmt: str, edit: Callable[[list[dict[str, Any]]], None]) -> Callable[[], bytes]:
    def content() -> bytes:
        records = fixture_records(source)
        edit(records)
        return encode(records, fmt)

    return content


BAD_TEXT = [123, 4.5, None, ["a", "b"], {"k": "v"}, True]
BAD_TOKENS = ["a b c", [1, 2], None, 7, {"k": ["v"]}]
BAD_LABELS = {
    "binary": [float("nan"), 7, -1, 0.5, "yes", None, [1], 2, 10**9],
    "class": [float("nan"), 7, -1, 0.5, "yes", None, [1], 2, True, 10**9],
}


def data_cases(rng: random.Random) -> list[Case]:
    cases: list[Case] = []

    def add(kind: str, build: Build) -> None:
        cases.append(Case(f"{len(cases):03d}-{kind}", build))

    def pick() -> tuple[Source, str]:
        source = rng.choice(SOURCES)
        return source, rng.choice(formats(source))

    for _ in range(8):
        source, fmt = pick()
        add(f"empty{fmt}", data_case(lambda: b"", source, fmt, ["{path}", "empty"]))
    for _ in range(4):
        source, fmt = pick()
        if fmt == ".parquet":
            fmt = ".jsonl"
        blank = rng.choice([b"\n\n\n", b"   \n \n", b"\r\n\r\n"])
        add(f"blank{fmt}", data_case(lambda blank=blank: blank, source, fmt, ["{path}"]))
    for _ in range(10):
        source, fmt = pick()
        garbage = rng.randbytes(rng.randrange(64, 4096)) + b"\xff\xfe\x00"
        add(f"binary-garbage{fmt}", data_case(lambda g=garbage: g, source, fmt, ["{path}"]))
    for _ in range(14):
        source, fmt = pick()
        add(f"truncated{fmt}", data_case(_truncated(rng, source, fmt), source, fmt, ["{path}"]))
    for _ in range(10):
        source, fmt = pick()
        if fmt == ".parquet":
            fmt = rng.choice([".jsonl", ".json"])
        add(f"wrong-encoding{fmt}", data_case(_reencoded(rng, source, fmt), source, fmt, ["{path}", "UTF-8"]))
    for kind, mentions in [
        ("garbage", ["{path}"]),
        ("single-row", ["{path}", "data.test_size"]),
        ("numbers", ["{path}"]),
    ]:
        # Numbers in a token column take datasets' per-element fallback (a minute for 10 MB): a text column here.
        source = rng.choice([s for s in SOURCES if s.flat] if kind == "numbers" else SOURCES)
        add(f"ten-mb-line-{kind}", data_case(_ten_mb_line(rng, source, kind), source, ".jsonl", mentions))
    for _ in range(12):
        source, fmt = pick()
        column = rng.choice(COLUMNS[source.schema])
        dropped = _edited(source, fmt, lambda rs, c=column: [r.pop(c) for r in rs])
        add(f"missing-column{fmt}", data_case(dropped, source, fmt, ["{path}", repr(column), "needs"]))
    for _ in range(16):
        source, fmt = pick()
        column = rng.choice(source.text + source.tokens)
        values = BAD_TEXT if column in source.text else BAD_TOKENS
        if fmt == ".csv":
            values = [v for v in values if v is None or isinstance(v, int | float)]
        value = rng.choice(values)
        if fmt in (".jsonl", ".json") and rng.random() < 0.5:
            row = rng.randrange(30)
            edit = _edited(source, fmt, lambda rs, c=column, v=value, i=row: rs[i].__setitem__(c, v))
            add(f"one-row-wrong-type{fmt}", data_case(edit, source, fmt, ["{path}", column]))
        else:
            edit = _edited(source, fmt, lambda rs, c=column, v=value: [r.__setitem__(c, v) for r in rs])
            add(f"column-wrong-type{fmt}", data_case(edit, source, fmt, ["{path}", column]))
    labelled = [s for s in SOURCES if s.label]
    for _ in range(16):
        source = rng.choice(labelled)
        fmt = rng.choice([".jsonl", ".json", ".csv"])
        value = rng.choice(BAD_LABELS[source.label_kind])
        if fmt == ".csv" and isinstance(value, list):
            value = "yes"
        row = rng.randrange(30)
        everywhere = rng.random() < 0.4
        edit = _edited(
            source,
            fmt,
            lambda rs, c=source.label, v=value, i=row, all_=everywhere: [
                r.__setitem__(c, v) for j, r in enumerate(rs) if all_ or j == i
            ],
        )
        add(f"bad-label{fmt}", data_case(edit, source, fmt, ["{path}", source.label]))
    for _ in range(5):
        source, fmt = pick()
        one = _edited(source, fmt, lambda rs: rs.__delitem__(slice(1, None)))
        add(f"single-row{fmt}", data_case(one, source, fmt, ["{path}", "data.test_size"]))
    for _ in range(5):
        source, fmt = pick()
        clients = rng.randrange(len(fixture_records(source)) - 7, 400)  # 8 rows go to the test split
        add(
            f"more-clients-than-rows{fmt}",
            data_case(_edited(source, fmt, lambda rs: None), source, fmt, ["fl.clients"], [f"fl.clients={clients}"]),
        )
    for _ in range(5):
        source = rng.choice(SOURCES)
        suffix = rng.choice([".txt", ".tsv", ".xlsx", ".jsonl.gz", ".yaml", ""])
        name = f"rows{suffix}"

        def unsupported(case_dir: Path, _: Runs | None, source: Source = source, name: str = name):
            (case_dir / name).write_bytes(encode(fixture_records(source), ".jsonl"))
            return data_command(case_dir, case_dir / name, source), [name, "neither"]

        add("unsupported-extension", unsupported)
    for _ in range(3):
        source, fmt = pick()

        def directory(case_dir: Path, _: Runs | None, source: Source = source, fmt: str = fmt):
            path = case_dir / f"rows{fmt}"
            path.mkdir()
            (path / f"part{fmt}").write_bytes(encode(fixture_records(source), fmt))
            return data_command(case_dir, path, source), [str(path), "directory"]

        add(f"directory{fmt}", directory)
    for _ in range(6):
        source, fmt = pick()
        kind = rng.choice(["no-schema", "unknown-schema", "schema-for-another-task"])

        def mismatched(case_dir: Path, _: Runs | None, source: Source = source, fmt: str = fmt, kind: str = kind):
            path = case_dir / f"rows{fmt}"
            path.write_bytes(encode(fixture_records(source), fmt))
            if kind == "no-schema":
                return data_command(case_dir, path, source, schema=False), ["data.schema"]
            if kind == "unknown-schema":
                return data_command(case_dir, path, source, ["data.schema=glue-sst9"]), ["data.schema", "valid"]
            other = next(s for s in SOURCES if s.task != source.task)
            return data_command(case_dir, path, source, [f"data.task={other.task}"]), ["data.task", "cannot use"]

        add(f"schema-{kind}", mismatched)
    for _ in range(6):
        source = rng.choice(SOURCES)
        fmt, text = rng.choice(
            [
                (".jsonl", "1\n2\n3\n"),
                (".jsonl", '"a"\n"b"\n'),
                (".jsonl", "[1, 2]\n[3, 4]\n"),
                (".jsonl", "null\nnull\n"),
                (".json", "3"),
                (".json", '"rows"'),
                (".json", "[1, 2, 3]"),
                (".json", '{"rows": 3}'),
            ]
        )
        add(f"not-records{fmt}", data_case(lambda t=text: t.encode(), source, fmt, ["{path}"]))
    return cases


# ---------------------------------------------------------------------------------------------------------
# 3. run directories for --resume


Damage = Callable[[Path, Runs], "list[str] | None"]
"""Edits a copied run directory; returns further words the error must contain (or None)."""


def truncated(rel: str, fraction: float) -> Damage:
    """The file cut to ``fraction`` of its size, never whole."""

    def damage(run_dir: Path, _: Runs) -> None:
        raw = (run_dir / rel).read_bytes()
        (run_dir / rel).write_bytes(raw[: int(fraction * (len(raw) - 1))])

    return damage


def written(rel: str, data: bytes) -> Damage:
    def damage(run_dir: Path, _: Runs) -> None:
        (run_dir / rel).write_bytes(data)

    return damage


def removed(rel: str) -> Damage:
    def damage(run_dir: Path, _: Runs) -> None:
        _remove(run_dir / rel)

    return damage


def swapped(rel: str) -> Damage:
    def damage(run_dir: Path, _: Runs) -> None:
        _swap_kind(run_dir / rel)

    return damage


def resume_cases(rng: random.Random) -> list[Case]:
    cases: list[Case] = []

    def add(kind: str, damage: Damage, mentions: list[str], items: list[str] = (), resume: str = "run") -> None:
        def build(case_dir: Path, runs: Runs | None) -> tuple[list[str], list[str]]:
            assert runs is not None
            run_dir = case_dir / "run"
            shutil.copytree(runs.completed, run_dir)
            more = damage(run_dir, runs) or []
            return ["run", "--quiet", "--resume", str(case_dir / resume), *_sets(list(items))], [*mentions, *more]

        cases.append(Case(f"{len(cases):03d}-{kind}", build))

    def extend() -> list[str]:
        return rng.choice([[], ["fl.rounds=3"], ["fl.rounds=5"]])

    newest_global, newest_state = f"{NEWEST}/global.safetensors", f"{NEWEST}/state.json"
    # checkpoint files: truncated, garbage, edited, deleted
    for _ in range(6):
        add("truncated-checkpoint", truncated(newest_global, rng.random()), [newest_global], extend())
    for _ in range(4):
        add("truncated-state-json", truncated(newest_state, rng.random()), [newest_state])
    for text in [
        b"[]",
        b'{"format": 2, "round": 2, "strategy": {}}',
        b'{"format": 1, "round": "two", "strategy": {}}',
        b'{"format": 1, "round": 7, "strategy": {}}',
        b'{"format": 1, "round": 2}',
        rng.randbytes(300),
    ]:
        add("bad-state-json", written(newest_state, text), [newest_state], extend())
    for _ in range(3):
        add("garbage-checkpoint", written(newest_global, rng.randbytes(rng.randrange(0, 5000))), [newest_global])
    for target, mentions in [
        (newest_state, ["checkpoint", "round 2"]),
        (NEWEST, ["checkpoint", "round 2"]),
        ("checkpoints", ["checkpoint", "round 2"]),
        (newest_global, [newest_global, "missing"]),
    ]:
        for items in ([], ["fl.rounds=4"]):
            add(f"deleted-{Path(target).name}", removed(target), mentions, items)
    add("deleted-adapter", removed("adapter"), ["nothing to resume", "fl.rounds"])
    add("deleted-adapter-fewer-rounds", removed("adapter"), ["fl.rounds=1", "below"], ["fl.rounds=1"])
    # metrics.jsonl
    for line in rng.sample(["garbage", "{not json", "\x00\x01", "}{", "[1, 2", "{'round': 1}"], 4):
        at = rng.random()
        add("garbage-metrics-line", lambda r, _, x=line, a=at: _insert_line(r, x, a), [], extend())
    for record in ["3", "[1, 2]", '"text"', "null", '{"type": "round", "round": "two"}']:
        at = rng.random()
        add("metrics-not-a-record", lambda r, _, x=record, a=at: _insert_line(r, x, a), [], extend())
    for _ in range(3):
        add("truncated-metrics", truncated("metrics.jsonl", 0.999 * rng.random()), ["metrics.jsonl", "round"], extend())
    add("deleted-metrics", removed("metrics.jsonl"), ["metrics.jsonl"], ["fl.rounds=3"])
    add("emptied-metrics", written("metrics.jsonl", b""), ["metrics.jsonl"])
    seed = rng.random()
    add("non-utf8-metrics", lambda r, _, s=seed: _reencode(r / "metrics.jsonl", s), ["metrics.jsonl"])
    # config.yaml
    for _ in range(4):
        seed = rng.random()
        add("config-invalid-yaml", lambda r, _, s=seed: _break_yaml(r / "config.yaml", s), ["config.yaml"])
    fields = schema_fields()
    for _ in range(5):
        key, info = rng.choice(fields)
        value = wrong_typed_value(rng, info.annotation)
        add("config-invalid-value", lambda r, _, k=key, v=value: _edit_config(r, k, v), ["config.yaml", key])
    for _ in range(2):
        key = f"{rng.choice(SECTIONS)}.{_word(rng)}"
        add("config-unknown-key", lambda r, _, k=key: _edit_config(r, k, 1), ["config.yaml", key, "valid keys"])
    for key, value in [
        ("model.name", "builtin:tiny"),
        ("model.name", "builtin:small"),
        ("model.name", "/no/such/model"),
        ("data.task", "completion"),
        ("data.task", "defect"),
        ("data.task", "code_to_text"),
        ("peft.r", 4),
        ("peft.method", "ia3"),
        ("train.lr", 0.5),
        ("fl.seed", 7),
    ]:
        add("config-edited", lambda r, _, k=key, v=value: _edit_config(r, k, v), ["config.yaml", key], extend())
    add("config-deleted", removed("config.yaml"), ["config.yaml", "does not exist"])
    add("config-empty", written("config.yaml", b""), ["config.yaml", "empty"])
    seed = rng.random()
    add("config-non-utf8", lambda r, _, s=seed: _reencode(r / "config.yaml", s), ["config.yaml", "UTF-8"])
    # another run's checkpoint: its peft.r differs, so do its tensors' shapes
    more = [f"fl.rounds={rng.randrange(3, 9)}"]  # a finished run with nothing to add is refused before the model loads
    add("other-run-global", _other_run("global"), [newest_global, "shape"], more)
    add("other-run-global-no-config", _other_run("global-no-config"), [newest_global, "shape"], more)
    add("other-run-checkpoint", _other_run("checkpoint"), ["peft.r"], extend())
    add("other-run-checkpoint-as-newer", _other_run("newer"), ["checkpoints/round-0003/state.json"], extend())
    add("other-run-state-json", _other_run("state"), ["peft.r"], extend())
    # a file where a directory should be, and the reverse
    for target, mentions, items in [
        ("checkpoints", ["checkpoints", "not a directory"], []),
        (NEWEST, ["checkpoint", "round 2"], []),
        ("adapter", ["nothing to resume"], []),
        ("metrics.jsonl", ["metrics.jsonl", "directory"], ["fl.rounds=3"]),
        ("config.yaml", ["config.yaml", "directory"], []),
        (newest_state, [newest_state], []),
        (newest_global, [newest_global], []),
    ]:
        add(f"swapped-{Path(target).name}", swapped(target), mentions, items)
    add("run-dir-is-a-file", swapped("."), ["no such run directory"])
    add("empty-run-dir", _emptied, ["config.yaml", "does not exist"])
    add("missing-run-dir", lambda r, _: None, ["no such run directory"], resume="never-made")
    add("summary-garbage", written("summary.json", b"{garbage"), ["summary.json"], ["fl.rounds=3"])
    add("summary-not-a-summary", written("summary.json", b"[1]"), ["summary.json"])
    # overrides --resume refuses
    for items, mentions in [
        (["train.lr=1"], ["only fl.rounds"]),
        (["peft.r=4"], ["only fl.rounds"]),
        (["fl.rounds=1"], ["fl.rounds=1", "below"]),
        (["fl.rounds=abc"], ["fl.rounds"]),
        (["fl.rounds=0"], ["fl.rounds"]),
        (["fl.rounds"], ["key=value"]),
        (["fl.rounds=[3"], ["fl.rounds", "parse"]),
    ]:
        add("bad-resume-override", lambda r, _: None, mentions, items)
    return cases


def _remove(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() else path.unlink()


def _emptied(run_dir: Path, _: Runs) -> None:
    for path in run_dir.iterdir():
        _remove(path)


def _swap_kind(path: Path) -> None:
    """A file where ``path`` was a directory, or a directory where it was a file."""
    was_dir = path.is_dir()
    _remove(path)
    if was_dir:
        path.write_text("not a directory\n")
    else:
        path.mkdir()
        (path / "inside").write_text("x\n")


def _insert_line(run_dir: Path, line: str, at: float) -> list[str]:
    """``line`` among the log's lines, never last (a torn last line is what a killed run leaves: not damage)."""
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    i = int(at * (len(lines) - 1))
    path.write_text("".join([*lines[:i], line + "\n", *lines[i:]]))
    return ["metrics.jsonl", f"line {i + 1}"]


def _reencode(path: Path, seed: float) -> None:
    path.write_bytes(non_utf8(random.Random(seed), path.read_text()))


def _break_yaml(path: Path, seed: float) -> None:
    path.write_text(broken_yaml(random.Random(seed), yaml.safe_load(path.read_text())))


def _edit_config(run_dir: Path, key: str, value: Any) -> None:
    path = run_dir / "config.yaml"
    data = yaml.safe_load(path.read_text())
    set_key(data, key, value)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def _other_run(kind: str) -> Damage:
    """Put (part of) the other run's newest checkpoint into this run: its global state (with this checkpoint's
    recorded configuration, or with none, as an older fedpeft wrote), its whole checkpoint (in place of the
    newest, or as a newer one), or its state.json."""

    def damage(run_dir: Path, runs: Runs) -> None:
        other = runs.other / NEWEST
        newest = run_dir / NEWEST
        if kind in ("global", "global-no-config"):
            shutil.copyfile(other / "global.safetensors", newest / "global.safetensors")
            if kind == "global-no-config":
                state = json.loads((newest / "state.json").read_text())
                state.pop("config", None)
                (newest / "state.json").write_text(json.dumps(state))
        elif kind == "checkpoint":
            shutil.rmtree(newest)
            shutil.copytree(other, newest)
        elif kind == "newer":
            shutil.copytree(other, run_dir / "checkpoints" / "round-0003")
        else:
            shutil.copyfile(other / "state.json", newest / "state.json")

    return damage
