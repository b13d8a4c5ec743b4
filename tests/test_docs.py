"""The docs are current and every figure in them is traceable to the command that measured it.

Checked on README.md and docs/*.md (fast, no Ray):

* docs/configuration.md is what `driftsched docs` generates from the config models, and every config
  key has a doc;
* every results include (``<!-- results: docs/results/X.md -->`` ... ``<!-- /results -->``) holds
  its file's current content;
* every link to a local file or folder resolves;
* every *figure table* sits inside a results include. A figure table is a Markdown table whose header
  names a measured quantity (a percentile such as p50, latency, TTFT, goodput, throughput, tok/s, req/s,
  attainment, MAE/RMSE, speed-up, utilisation, makespan) and whose body holds a numeric cell (12,
  1,672, 0.93, 97.1%, 1.4x, 3 s, ∞); configuration and API tables (keys, defaults, status codes) name no
  measured quantity. Tables in docs/results/ are written by the command their page names;
* every docs/results/*.md names its command line, commit and machine.

Each check is also run on a small broken tree, so that it is seen to fail.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from driftsched.docs import command, pages, reference
from driftsched.results import PROJECT_ROOT

ROOT = PROJECT_ROOT
PAGES = pages.doc_pages(ROOT)
RESULTS = pages.results_pages(ROOT)

FIGURES = """| policy | E2E p50 (s) | goodput tok/s |
| :--- | ---: | ---: |
| fifo | 1.25 | 1,672 |
"""
CONFIG_TABLE = """| key | type | default |
| :--- | :--- | :--- |
| `queue_timeout_s` | float | `60.0` |
"""
PAGE = """- Command: `driftsched simulate --out x`
- Commit: `abc1234+dirty`
- Machine: some CPU (2 cores)
- Date: 2025-01-01

""" + FIGURES


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_configuration_reference_is_current_and_every_key_documented():
    assert reference.undocumented_keys() == [], "give these config fields a docstring"
    current = (ROOT / command.CONFIGURATION).read_text() if (ROOT / command.CONFIGURATION).is_file() else ""
    assert current == reference.render(), "docs/configuration.md is stale: run `driftsched docs`"


def test_the_reference_lists_every_key_with_its_type_default_and_doc():
    text = reference.render()
    assert "## core.scheduler.preemption" in text and "## replicas.autoscaling" in text
    row = next(line for line in text.splitlines() if line.startswith("| `queue_timeout_s` |"))
    from serve_app.config import GatewayConfig

    field = GatewayConfig.model_fields["queue_timeout_s"]
    assert f"`{field.default}`" in row and "float, > 0" in row
    assert " ".join((field.description or "").split()) in row


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_results_includes_are_in_sync(page):
    synced, missing = pages.sync_includes(page.read_text(), ROOT)
    assert missing == [], f"{_name(page)}: include a results file that exists"
    assert synced == page.read_text(), f"{_name(page)} has stale results: run `driftsched docs`"


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_local_links_resolve(page):
    assert pages.broken_links(page, ROOT) == []


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_figure_tables_sit_in_results_includes(page):
    assert pages.loose_figure_tables(page, ROOT) == []


@pytest.mark.parametrize("page", RESULTS, ids=_name)
def test_results_pages_name_their_command_commit_and_machine(page):
    assert pages.provenance_problems(page, ROOT) == []


def test_the_headline_results_page_exists():
    assert (ROOT / "docs/results/simulate.md").is_file(), (
        "run the headline `driftsched simulate ... --results-md docs/results/simulate.md`"
    )


# -- the checks fail on a broken tree ----------------------------------------------------------------


def test_figure_tables_are_told_from_other_tables():
    (figures,) = pages.tables(FIGURES)
    (config,) = pages.tables(CONFIG_TABLE)
    assert pages.is_figure_table(figures) and not pages.is_figure_table(config)
    no_numbers = "| policy | p50 |\n| --- | --- |\n| fifo | fast |\n"
    assert not pages.is_figure_table(pages.tables(no_numbers)[0])
    fenced = "```\n" + FIGURES + "```\n"
    assert pages.tables(fenced) == []  # a table in a code block is an example, not figures


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    """A project with one results page, a README including it and a docs page linking to it."""
    (tmp_path / "docs" / "results").mkdir(parents=True)
    (tmp_path / "docs" / "results" / "simulate.md").write_text(PAGE)
    include = "<!-- results: docs/results/simulate.md -->\n" + PAGE + "<!-- /results -->\n"
    (tmp_path / "README.md").write_text("# X\n\nSee [the docs](docs/guide.md).\n\n" + include)
    (tmp_path / "docs" / "guide.md").write_text("[results](results/simulate.md), [web](https://x.org)\n")
    reference_text = reference.render()
    (tmp_path / "docs" / "configuration.md").write_text(reference_text)
    for target in re.findall(r"\]\(\.\./([^)#]+)\)", reference_text):  # what the reference links to
        (tmp_path / target).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / target).touch()
    return tmp_path


def _problems(root: Path) -> list[str]:
    stale, problems = command.derived(root)
    return [f"stale {p.relative_to(root)}" for p in stale] + problems + command.lint(root)


def test_a_good_tree_passes(tree):
    assert _problems(tree) == []


def test_a_changed_result_makes_the_include_stale_and_docs_syncs_it(tree, capsys):
    page = tree / "docs" / "results" / "simulate.md"
    page.write_text(PAGE.replace("1.25", "1.50"))
    assert _problems(tree) == ["stale README.md"]
    args = argparse.Namespace(root=tree, check=True)
    assert command.run(args) == 1 and "stale: README.md" in capsys.readouterr().out
    assert command.run(argparse.Namespace(root=tree, check=False)) == 0
    assert "1.50" in (tree / "README.md").read_text() and _problems(tree) == []


def test_a_stale_configuration_reference_is_found_and_rewritten(tree):
    (tree / "docs" / "configuration.md").write_text("old\n")
    assert _problems(tree) == ["stale docs/configuration.md"]
    command.run(argparse.Namespace(root=tree, check=False))
    assert (tree / "docs" / "configuration.md").read_text() == reference.render()


def test_a_broken_link_is_named(tree):
    (tree / "docs" / "guide.md").write_text("[gone](results/bench-live.md) and `[code](nowhere.md)`\n")
    assert _problems(tree) == ["docs/guide.md:1: link to results/bench-live.md, which does not exist"]


def test_a_pasted_figure_table_is_named(tree):
    readme = tree / "README.md"
    readme.write_text(readme.read_text() + "\n" + FIGURES)
    (problem,) = _problems(tree)
    assert problem.startswith("README.md:") and "outside a results include" in problem


def test_a_results_page_without_provenance_is_named(tree):
    (tree / "docs" / "results" / "bench-live.md").write_text(FIGURES)
    fields = ("Command", "Commit", "Machine", "Date")
    assert _problems(tree) == [f"docs/results/bench-live.md: no '- {field}: ...' line" for field in fields]


def test_an_include_of_a_missing_file_is_named(tree):
    readme = tree / "README.md"
    readme.write_text(readme.read_text() + "\n<!-- results: docs/results/none.md -->\n<!-- /results -->\n")
    assert _problems(tree) == ["README.md: includes docs/results/none.md, which does not exist"]


def test_a_section_include_copies_the_provenance_and_that_section_only(tree):
    page = tree / "docs" / "results" / "simulate.md"
    provenance = "\n".join(line for line in PAGE.splitlines() if line.startswith("- "))
    page.write_text(provenance + "\n\n## Summary\n\n| policy | p50 |\n| --- | ---: |\n| fifo | 1.00 |\n\n"
                    "## Details\n\n| policy | p99 |\n| --- | ---: |\n| fifo | 9.00 |\n")
    readme = tree / "README.md"
    readme.write_text("# X\n\n<!-- results: docs/results/simulate.md#summary -->\n<!-- /results -->\n")
    command.run(argparse.Namespace(root=tree, check=False))
    text = readme.read_text()
    assert "- Command:" in text and "| fifo | 1.00 |" in text
    assert "9.00" not in text and "## Details" not in text
    readme.write_text("<!-- results: docs/results/simulate.md#nothing -->\n<!-- /results -->\n")
    assert "has no section 'nothing'" in " ".join(_problems(tree))
