"""`driftsched docs`: regenerate what the docs derive from code and commands, and check the rest.

Writes (or with ``--check`` only names, exiting 1) the stale derived files:

* docs/configuration.md, from the config models (`driftsched.docs.reference`);
* every results include in README.md and docs/*.md, from its docs/results/ file (`driftsched.docs.pages`).

Then reports, exiting 1, what it cannot mend itself: config fields without a doc, includes of missing
files, links to local files that do not exist, figure tables outside results includes, and results
pages that do not name their command, commit and machine.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from driftsched.docs import pages, reference
from driftsched.results import PROJECT_ROOT

CONFIGURATION = Path("docs/configuration.md")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 naming what is stale")
    parser.add_argument(
        "--root", type=Path, default=PROJECT_ROOT, help="project root (default: this checkout)"
    )


def derived(root: Path) -> tuple[dict[Path, str], list[str]]:
    """The derived files that differ from what they should hold (path -> text), and the problems
    found while deriving them."""
    stale: dict[Path, str] = {}
    problems = [f"config field without a doc: {key}" for key in reference.undocumented_keys()]
    target = root / CONFIGURATION
    text = reference.render()
    if not target.is_file() or target.read_text() != text:
        stale[target] = text
    for page in pages.doc_pages(root):
        if page == target:
            continue
        current = page.read_text()
        synced, missing = pages.sync_includes(current, root)
        problems += [f"{page.relative_to(root)}: {p}" for p in missing]
        if synced != current:
            stale[page] = synced
    return stale, problems


def lint(root: Path) -> list[str]:
    """Problems `driftsched docs` cannot mend: broken links, loose figure tables, results pages
    without their provenance."""
    out = []
    for page in pages.doc_pages(root):
        out += pages.broken_links(page, root)
        out += pages.loose_figure_tables(page, root)
    for page in pages.results_pages(root):
        out += pages.provenance_problems(page, root)
    return out


def run(args: argparse.Namespace) -> int:
    root = args.root.resolve()
    stale, problems = derived(root)
    for path, text in stale.items():
        name = path.relative_to(root)
        if args.check:
            print(f"stale: {name} (run `driftsched docs`)")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {name}")
    problems += lint(root)
    for problem in problems:
        print(f"problem: {problem}")
    if not stale and not problems:
        print("docs are current")
    return 1 if problems or (args.check and stale) else 0
