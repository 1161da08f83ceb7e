"""The README's and docs/architecture.md's config and output tables against the code they describe.

Config tables (header `key | default | meaning`) must list every key of `pipeline.config.JobConfig`,
nested as `section.key` (`audio.vad.threshold`), with its default, and no key the config does not
have. Output tables (header `column | type | meaning`) must list every column of
`pipeline.schema.OUTPUT_COLUMNS` with its Arrow type, and no column the schema does not have.

How a config row states defaults: one backticked key per key in the first cell; several keys share a
row by giving their defaults in order, separated by ` / ` (one default for all of them is also fine).
A key whose default is a value must show exactly that value (backticks optional, `30` for `30.0`);
a key whose default is None may describe what happens instead (`Ray decides`), but not show a bare
value; a required key says `required`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pydantic import BaseModel

from pipeline.config import JobConfig
from pipeline.schema import OUTPUT_COLUMNS, output_schema

ROOT = Path(__file__).resolve().parent.parent
DOCS = ["README.md", "docs/architecture.md"]
REQUIRED = object()
KEY = re.compile(r"[a-z_]+(?:\.[a-z_]+)+")
COLUMN = re.compile(r"[a-z_]+")


# -- reading markdown tables -------------------------------------------------------------------------


def split_row(line: str) -> list[str]:
    """`| a | b `x|y` |` -> ["a", "b `x|y`"]: a `|` inside backticks or escaped as `\\|` is text."""
    cells, cell, in_code, i = [], "", False, 0
    body = line.strip()
    body = body[1:] if body.startswith("|") else body
    while i < len(body):
        ch = body[i]
        if ch == "\\" and body[i + 1 : i + 2] == "|":
            cell, i = cell + "|", i + 2
            continue
        if ch == "`":
            in_code = not in_code
        if ch == "|" and not in_code:
            cells.append(cell.strip())
            cell = ""
        else:
            cell += ch
        i += 1
    if cell.strip():
        cells.append(cell.strip())
    return cells


def tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every pipe table in `text` (outside fenced code blocks) -> (header cells, body rows)."""
    found: list[tuple[list[str], list[list[str]]]] = []
    block: list[str] = []
    fenced = False
    for line in text.splitlines() + [""]:
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if not fenced and line.lstrip().startswith("|"):
            block.append(line)
            continue
        if len(block) >= 2 and re.fullmatch(r"[\s|:-]+", block[1]):
            found.append((split_row(block[0]), [split_row(b) for b in block[2:]]))
        block = []
    return found


def tables_with(path: str, header: list[str]) -> list[list[list[str]]]:
    text = (ROOT / path).read_text(encoding="utf-8")
    return [rows for head, rows in tables(text) if [h.lower() for h in head] == header]


def code_spans(cell: str) -> list[str]:
    return re.findall(r"`([^`]*)`", cell)


# -- what the code says ---------------------------------------------------------------------------------


def config_defaults(model: type[BaseModel] = JobConfig, prefix: str = "") -> dict[str, Any]:
    """`section.key` -> default (REQUIRED when there is none), nested sections flattened."""
    out: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            out.update(config_defaults(kind, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = REQUIRED if field.is_required() else field.default
    return out


def doc_type(t: pa.DataType) -> str:
    """An Arrow type as the docs write it (`D` for the embedding width)."""
    if pa.types.is_fixed_size_list(t):
        return (
            f"fixed_size_list<{doc_type(t.value_type)}, {'D' if t.list_size == EMBED_DIM else t.list_size}>"
        )
    if pa.types.is_list(t):
        return f"list<{doc_type(t.value_type)}>"
    if pa.types.is_struct(t):
        return f"struct<{', '.join(t.field(i).name for i in range(t.num_fields))}>"
    return {"halffloat": "float16", "float": "float32", "double": "float64", "int32": "int32"}.get(
        str(t), str(t)
    )


EMBED_DIM = 768  # any width other than the 9 classes, so D is told apart from the score lists


# -- the checks -----------------------------------------------------------------------------------------


def documented_defaults(path: str) -> tuple[dict[str, str], list[str]]:
    """key -> the default text the doc gives it, and the problems found reading the rows."""
    found: dict[str, str] = {}
    problems: list[str] = []
    for rows in tables_with(path, ["key", "default", "meaning"]):
        for row in rows:
            keys = [k for k in code_spans(row[0]) if KEY.fullmatch(k)]
            if not keys:
                problems.append(f"row without a `section.key`: {row[0]!r}")
                continue
            parts = [p.strip() for p in re.split(r"\s+/\s+", row[1])] if len(row) > 1 else [""]
            if len(parts) == 1:
                parts *= len(keys)
            if len(parts) != len(keys):
                problems.append(f"{', '.join(keys)}: {len(keys)} keys but {len(parts)} defaults ({row[1]!r})")
                continue
            for k, p in zip(keys, parts, strict=True):
                if k in found:
                    problems.append(f"{k}: listed twice")
                found[k] = p
    return found, problems


def _literal(text: str) -> Any:
    """Doc text -> the value it shows, or the text itself when it is not a bare value."""
    t = text.strip().strip("`").strip()
    if t in ("true", "false"):
        return t == "true"
    try:
        return float(t)
    except ValueError:
        return t


def default_problem(key: str, default: Any, text: str) -> str | None:
    if default is REQUIRED:
        return None if text.strip().lower() == "required" else f"{key}: required, the doc says {text!r}"
    shown = _literal(text)
    if default is None:
        if isinstance(shown, (bool, float)):
            return f"{key}: no default (None), the doc shows the value {text!r}"
        return None
    if isinstance(default, bool) or isinstance(shown, bool):
        ok = shown is default
    elif isinstance(default, (int, float)):
        ok = isinstance(shown, float) and shown == float(default)
    else:
        ok = shown == default
    return None if ok else f"{key}: default {default!r}, the doc says {text!r}"


@pytest.mark.parametrize("path", DOCS)
def test_config_table_lists_every_key_with_its_default(path):
    assert tables_with(path, ["key", "default", "meaning"]), f"{path}: no `key | default | meaning` table"
    documented, problems = documented_defaults(path)
    expected = config_defaults()
    problems += [f"{k}: missing from the table" for k in expected if k not in documented]
    problems += [f"{k}: not a config key" for k in documented if k not in expected]
    problems += [
        p for k, text in documented.items() if k in expected if (p := default_problem(k, expected[k], text))
    ]
    assert not problems, f"{path}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("path", DOCS)
def test_output_table_lists_every_column_with_its_type(path):
    found = tables_with(path, ["column", "type", "meaning"])
    assert len(found) == 1, f"{path}: expected one `column | type | meaning` table, found {len(found)}"
    schema = output_schema(EMBED_DIM, 9, True, pa.schema([]))
    problems: list[str] = []
    documented: set[str] = set()
    for row in found[0]:
        names = [c for c in code_spans(row[0]) if COLUMN.fullmatch(c)]
        # a column described twice gets two meanings (they drifted apart: null for whole files, or not)
        problems += [f"{name}: listed twice" for name in names if name in documented]
        documented |= set(names)
        for name in names:
            if name not in schema.names:
                problems.append(f"{name}: not an output column")
                continue
            f = schema.field(name)
            want = doc_type(f.type) + ("" if f.nullable else ", not null")
            if row[1].strip("` ") not in (want, doc_type(f.type)) or (f.nullable and "not null" in row[1]):
                problems.append(f"{name}: type {want!r}, the doc says {row[1]!r}")
    problems += [f"{c}: missing from the table" for c in OUTPUT_COLUMNS if c not in documented]
    assert not problems, f"{path}:\n  " + "\n  ".join(problems)


# -- the checker itself -----------------------------------------------------------------------------------


def test_tables_are_read_with_pipes_in_code_and_fences_skipped():
    text = (
        "| key | default | meaning |\n|---|---|---|\n| `a.b` / `a.c` | `x|y` / 2 | m \\| n |\n\n"
        "```\n| key | default | meaning |\n|---|---|---|\n| `z.z` | 1 | fenced |\n```\n"
    )
    assert tables(text) == [(["key", "default", "meaning"], [["`a.b` / `a.c`", "`x|y` / 2", "m | n"]])]


@pytest.mark.parametrize(
    "default,text,bad",
    [
        (30.0, "30", False),
        (4 * 3600.0, "14400", False),
        (256, "`256`", False),
        (False, "`false`", False),
        ("auto", "`auto`", False),
        (None, "Ray decides", False),
        (REQUIRED, "required", False),
        (64, "16", True),
        (False, "`true`", True),
        ("zstd", "`snappy`", True),
        (None, "5", True),
        (1000, "a decoded block", True),
        (REQUIRED, "none", True),
    ],
)
def test_a_default_that_differs_is_reported(default, text, bad):
    assert (default_problem("k.k", default, text) is not None) == bad
