"""Results pages: the Markdown a measuring command writes, stating where its figures come from.

A page is what `docs/results/*.md` holds and what README.md and docs/ pages include (`driftsched docs`
keeps the copies in sync). It opens with its provenance, one line each, in a fixed form that
`driftsched.docs` checks:

    - Command: `driftsched simulate --config config.l4.yaml ...`
    - Commit: `e79bf3f+dirty`
    - Machine: <CPU model> (<N> cores); <what was modelled or driven, if anything>
    - Date: 2025-01-31

then the command's table and its notes. No heading: the page reads the same on its own and included
under a heading of the including page. The commit is the checkout's short hash, with "+dirty" when a
tracked file differs from it (untracked files, such as a run's output directory, do not count).
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import shlex
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]

FIELDS = ("Command", "Commit", "Machine", "Date")
"""The provenance lines every results page carries, in this order."""
FIELD_LINE = re.compile(r"^- (Command|Commit|Machine|Date): (.+)$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Provenance:
    """Where a table's figures come from: the exact command line, the code, the machine, the day."""

    command: str
    commit: str
    machine: str
    date: str

    def lines(self) -> list[str]:
        return [
            f"- Command: `{self.command}`",
            f"- Commit: `{self.commit}`",
            f"- Machine: {self.machine}",
            f"- Date: {self.date}",
        ]


def command_line(program: str, argv: Sequence[str]) -> str:
    """`program` and its arguments as one shell-quoted line (the line that re-runs the command)."""
    return " ".join([program, *(shlex.quote(a) for a in argv)])


def git_commit(root: Path = PROJECT_ROOT) -> str:
    """Short hash of HEAD, "+dirty" if a tracked file differs from it; "unknown" outside a git checkout."""
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}+dirty" if changes else head


def cpu_description() -> str:
    """The CPU model (from /proc/cpuinfo on Linux) and the machine's cores (not this process's
    affinity: a benchmark may pin itself to one core and still describe the machine it ran on)."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    model = model or platform.processor() or platform.machine() or "unknown CPU"
    cores = os.cpu_count() or 0
    return f"{model} ({cores} core{'' if cores == 1 else 's'})"


def provenance(command: str, setup: str | None = None) -> Provenance:
    """This checkout and machine now; `setup` says what ran on it (e.g. the modelled GPUs)."""
    machine = cpu_description() + (f"; {setup}" if setup else "")
    return Provenance(command, git_commit(), machine, datetime.date.today().isoformat())


def page(source: Provenance, table: str, notes: Iterable[str] = (), summary: str | None = None) -> str:
    """A results page: provenance lines, the table, then each note as a paragraph.

    With a `summary` (a short table of the headline figures), the page has two sections, ``## Summary``
    and ``## Details`` (the table and the notes), and a short page can include the first alone
    (``docs/results/X.md#summary``, see `driftsched.docs.pages`)."""
    head = ["\n".join(source.lines())]
    if summary is None:
        return "\n\n".join([*head, table.rstrip("\n"), *notes]) + "\n"
    body = ["## Summary", summary.rstrip("\n"), "## Details", table.rstrip("\n"), *notes]
    return "\n\n".join(head + body) + "\n"


def write_page(text: str, paths: Iterable[Path | None]) -> list[Path]:
    """Write one page to every given path (None skipped), creating parent folders."""
    written = []
    for path in paths:
        if path is None:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


def read_provenance(text: str) -> dict[str, str]:
    """The provenance fields a page states (a subset of `FIELDS` when some are missing)."""
    return {m.group(1): m.group(2).strip() for m in FIELD_LINE.finditer(text)}


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]], align: str = "") -> str:
    """A GitHub Markdown table; `align` holds one of l/r per column (default: first left, rest right)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---:" if a == "r" else ":---" for a in align]
    lines = [_row(header), _row(rule)]
    lines += [_row(r) for r in rows]
    return "\n".join(lines)


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
