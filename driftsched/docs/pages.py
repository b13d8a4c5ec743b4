"""The documentation pages (README.md, docs/*.md): results includes, local links, figure tables.

Results include: a results page's content copied between two markers, kept equal to the file by
`sync_includes`::

    <!-- results: docs/results/simulate.md -->
    ...the file's content...
    <!-- /results -->

A fragment names one section of the page: ``docs/results/simulate.md#summary`` copies the page's
provenance lines and the body of its ``## Summary`` section, so a short page (the README) can carry
the headline table and still say which command, commit and machine produced it.

Figure table: a Markdown table of measured figures, recognised as one whose header names a measured
quantity (`MEASURED`: a percentile such as p50, latency, TTFT, goodput, throughput, tok/s, req/s,
attainment, MAE/RMSE, speed-up, utilisation, makespan) and whose body has at least one numeric cell
(`NUMBER`: 12, 1,672, 0.93, 97.1%, 1.4x, 3 s, ∞). A configuration or API table (keys, defaults, status
codes) names no measured quantity and is not one. A figure table in README.md or docs/*.md must sit
inside a results include; one in docs/results/ is the output of the command its page names.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from driftsched.results import FIELD_LINE, FIELDS, read_provenance

INCLUDE = re.compile(
    r"(?P<open><!-- results: (?P<path>[^\s>]+) -->\n)(?P<body>.*?)(?P<close><!-- /results -->)", re.DOTALL
)
MEASURED = re.compile(
    r"\bp\d{2}(\.\d+)?\b|latency|\bttft\b|\btpot\b|goodput|throughput|tok/s|tokens/s|req/s|attainment"
    r"|\bmae\b|\brmse\b|speed-?up|utili[sz]ation|makespan",
    re.IGNORECASE,
)
NUMBER = re.compile(r"^[~≈<>≤≥+\-−]?\d[\d,]*(\.\d+)?\s*(%|x|×|s|ms|µs)?$|^(∞|inf)$")
_LINK = re.compile(r"!?\[[^\]]*\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
_REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(?P<target>\S+)", re.MULTILINE)
_HTML = re.compile(r"\b(?:src|href)=\"(?P<target>[^\"]+)\"")
_RULE = re.compile(r"^\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")
_COMMIT = re.compile(r"^`[0-9a-f]{7,40}(\+dirty)?`$")


def doc_pages(root: Path) -> list[Path]:
    """README.md and the pages directly under docs/ (results pages are written by commands)."""
    pages = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    return [p for p in pages if p.is_file()]


def results_pages(root: Path) -> list[Path]:
    return sorted((root / "docs" / "results").glob("*.md"))


def sync_includes(text: str, root: Path) -> tuple[str, list[str]]:
    """`text` with every results include holding its file's current content, and the problems found
    (an include of a file that does not exist is left as it is)."""
    problems: list[str] = []

    def fill(match: re.Match[str]) -> str:
        path, _, fragment = match["path"].partition("#")
        source = root / path
        if not source.is_file():
            problems.append(f"includes {path}, which does not exist")
            return match[0]
        content = source.read_text()
        if fragment:
            section = _section(content, fragment)
            if section is None:
                problems.append(f"includes {match['path']}, but {path} has no section '{fragment}'")
                return match[0]
            content = "\n".join(m[0] for m in FIELD_LINE.finditer(content)) + "\n\n" + section
        return match["open"] + content.rstrip("\n") + "\n" + match["close"]

    return INCLUDE.sub(fill, text), problems


def _section(text: str, fragment: str) -> str | None:
    """The body of the heading whose anchor is `fragment`, up to the next heading of its level or above."""
    lines = text.splitlines()
    for index, line in enumerate(lines):
        heading = re.match(r"^(#+)\s+(.*)$", line)
        if heading and _anchor(heading[2]) == fragment:
            level, body = len(heading[1]), []
            for rest in lines[index + 1:]:
                following = re.match(r"^(#+)\s", rest)
                if following and len(following[1]) <= level:
                    break
                body.append(rest)
            return "\n".join(body).strip("\n")
    return None


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _prose_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def broken_links(page: Path, root: Path) -> list[str]:
    """Links from `page` to local files or folders that do not exist (web links and anchors skipped)."""
    out = []
    for number, line in _prose_lines(page.read_text()):
        line = re.sub(r"`[^`]*`", "", line)  # code spans are not links
        for pattern in (_LINK, _REFERENCE, _HTML):
            for match in pattern.finditer(line):
                target = match["target"].strip("<>")
                if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith("#"):
                    continue
                path = target.split("#", 1)[0].split("?", 1)[0]
                resolved = root / path.lstrip("/") if path.startswith("/") else page.parent / path
                if not resolved.exists():
                    out.append(f"{page.relative_to(root)}:{number}: link to {target}, which does not exist")
    return out


@dataclass(frozen=True, slots=True)
class Table:
    first_line: int
    last_line: int
    header: list[str]
    rows: list[list[str]]


def _cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]


def tables(text: str) -> list[Table]:
    """The Markdown tables of `text` outside code fences: a header line, a rule, body lines."""
    prose = dict(_prose_lines(text))  # line number -> line; fenced lines absent
    out, number, last = [], 1, max(prose, default=0)
    while number < last:
        head, rule = prose.get(number, ""), prose.get(number + 1, "")
        if "|" not in head or not _RULE.match(rule.strip()):
            number += 1
            continue
        end = number + 2
        while prose.get(end, "").lstrip().startswith("|"):
            end += 1
        rows = [_cells(prose[n]) for n in range(number + 2, end)]
        out.append(Table(number, end - 1, _cells(head), rows))
        number = end
    return out


def is_figure_table(table: Table) -> bool:
    """See the module docstring."""
    if not any(MEASURED.search(cell) for cell in table.header):
        return False
    return any(NUMBER.match(cell.strip("*` ")) for row in table.rows for cell in row)


def loose_figure_tables(page: Path, root: Path) -> list[str]:
    """Figure tables of `page` outside every results include: figures nobody can trace to a command."""
    text = page.read_text()
    included = [
        (text.count("\n", 0, m.start()) + 1, text.count("\n", 0, m.end()) + 1) for m in INCLUDE.finditer(text)
    ]
    return [
        f"{page.relative_to(root)}:{t.first_line}: a table of figures ({', '.join(t.header[:4])}, ...) "
        "outside a results include; have its command write it to docs/results/ and include that file"
        for t in tables(text)
        if is_figure_table(t) and not any(a <= t.first_line and t.last_line <= b for a, b in included)
    ]


def provenance_problems(page: Path, root: Path) -> list[str]:
    """What a results page fails to state: its command line, commit and machine (`driftsched.results`)."""
    stated = read_provenance(page.read_text())
    name = page.relative_to(root)
    problems = [f"{name}: no '- {field}: ...' line" for field in FIELDS if field not in stated]
    command = stated.get("Command", "")
    if "Command" in stated and not re.match(r"^`(driftsched|python|\.venv/bin/python) \S.*`$", command):
        problems.append(f"{name}: the command {command} is not a `driftsched ...` or `python ...` line")
    if "Commit" in stated and not _COMMIT.match(stated["Commit"]):
        problems.append(f"{name}: the commit {stated['Commit']} is not a short hash")
    return problems
