"""The defaults the docs quote are the defaults the programs have.

Every flag default is defined once (gateway/config.py, worker/config.py)
and the argument parsers take theirs from there; this test reads the docs
the way a person does — tables with a "default" column, and prose such as
"`--ping-interval` (2 s)" or "`--spill-factor` (default 1.5)" — and checks
each quoted default against the parsers, so the docs cannot drift.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

# Defaults the docs describe in words rather than quote: the words, and the
# value the parser must then have.
DESCRIBED = {
    "--max-queued-requests": ("the worker's own", 0),
    "--vision": ("detect", None),
}

Defaults = dict[str, dict[str, Any]]  # process -> flag -> default


def _flags(parser: argparse.ArgumentParser) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for action in parser._actions:
        for opt in action.option_strings:
            if opt.startswith("--"):
                out[opt] = action.default
                if isinstance(action, argparse.BooleanOptionalAction):
                    out[opt.replace("--", "--no-", 1)] = action.default
    return out


@pytest.fixture(scope="module")
def defaults() -> Defaults:
    from gateway.cli import build_parser as gateway_parser
    from worker.cli import build_parser as worker_parser

    return {"gateway": _flags(gateway_parser()), "worker": _flags(worker_parser())}


def _matches(text: str, value: Any) -> bool:
    """Does the documented ``text`` state ``value``?"""
    text = text.strip().strip("`").strip()
    word = text.split()[0].rstrip(",;:") if text else ""
    if isinstance(value, bool):
        return word == ("on" if value else "off")
    if value is None or value == [] or value == "":
        return word in ("none", "off")
    if isinstance(value, (int, float)):
        try:
            return float(word.replace("_", "")) == float(value)
        except ValueError:
            return False
    return word == str(value)


def _check(defaults: Defaults, where: str, flag: str, text: str, process: str | None, problems: list[str]) -> None:
    procs = [process] if process else [p for p in defaults if flag in defaults[p]]
    known = [(p, defaults[p][flag]) for p in procs if flag in defaults.get(p, {})]
    if not known:
        problems.append(f"{where}: {flag} is documented with a default but no {process or 'gateway or worker'} flag has that name")
        return
    if flag in DESCRIBED:
        words, value = DESCRIBED[flag]
        if text.strip().startswith(words) and all(v == value for _, v in known):
            return
    if not any(_matches(text, v) for _, v in known):
        problems.append(f"{where}: {flag} documented as {text.strip()!r}, but the default is " +
                        " / ".join(f"{v!r} ({p})" for p, v in known))


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _tables(path: Path) -> list[tuple[int, list[str], list[list[str]]]]:
    """(line number, header cells, rows) of every Markdown table."""
    lines = path.read_text().splitlines()
    out = []
    i = 0
    while i < len(lines) - 1:
        if lines[i].startswith("|") and re.match(r"^\|[\s:|-]+\|$", lines[i + 1].strip()):
            header, rows, j = _cells(lines[i]), [], i + 2
            while j < len(lines) and lines[j].startswith("|"):
                rows.append(_cells(lines[j]))
                j += 1
            out.append((i + 1, header, rows))
            i = j
        else:
            i += 1
    return out


FLAG = re.compile(r"`(--?[A-Za-z0-9][A-Za-z0-9/-]*)[^`]*`")


def _named_flags(cell: str) -> list[str]:
    """The long flags a cell names (``-V/--vision`` -> ``--vision``)."""
    out = []
    for m in FLAG.finditer(cell):
        names = [n for n in m.group(1).split("/") if n.startswith("--")]
        out += names[:1]
    return out


def test_tables_quote_the_real_defaults(defaults: Defaults) -> None:
    problems: list[str] = []
    checked = 0
    for path in DOCS:
        for lineno, header, rows in _tables(path):
            heads = [h.lower() for h in header]
            if "default" not in heads:
                continue
            col = heads.index("default")
            proc_col = heads.index("process") if "process" in heads else None
            for row in rows:
                if len(row) <= col:
                    continue
                flags = [f for c in row[:col] for f in _named_flags(c)]
                if not flags:
                    continue
                texts = [row[col]] if len(flags) == 1 else [t.strip() for t in row[col].split(",")]
                assert len(texts) == len(flags), f"{path.name}:{lineno}: {flags} vs {row[col]!r}"
                process = row[proc_col] if proc_col is not None else None
                for flag, text in zip(flags, texts):
                    _check(defaults, f"{path.relative_to(REPO)} (table at line {lineno})", flag, text, process, problems)
                    checked += 1
    assert not problems, "\n".join(problems)
    assert checked >= 20, f"only {checked} documented defaults found: is the table format still recognised?"


# "`--ping-interval` (2 s)", "`--spill-factor` (default 1.5)",
# "`--drain-timeout` seconds (default 30)", "`--enable-prefix-caching` (default on)"
PROSE = re.compile(
    r"`(--[a-z0-9-]+)[^`]*`(?:\s+[a-z]+)?\s+\((?:default:?\s+)?"
    r"(on|off|-?\d[\d_.]*)(?:\s*(?:s|seconds|tokens|MB|GB))?\)"
)


def test_prose_quotes_the_real_defaults(defaults: Defaults) -> None:
    problems: list[str] = []
    checked = 0
    for path in DOCS:
        text = re.sub(r"\s+", " ", path.read_text())
        for m in PROSE.finditer(text):
            _check(defaults, str(path.relative_to(REPO)), m.group(1), m.group(2), None, problems)
            checked += 1
    assert not problems, "\n".join(problems)
    assert checked >= 5, f"only {checked} defaults quoted in prose: is the pattern still right?"


def test_the_checker_notices_a_wrong_default(defaults: Defaults) -> None:
    problems: list[str] = []
    _check(defaults, "here", "--ping-timeout", "30 s", None, problems)
    _check(defaults, "here", "--no-such-flag", "1", None, problems)
    _check(defaults, "here", "--ping-timeout", str(int(defaults["gateway"]["--ping-timeout"])), None, problems)
    assert len(problems) == 2 and "--ping-timeout" in problems[0] and "--no-such-flag" in problems[1]
