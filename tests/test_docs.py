"""The documentation site: every page's examples run, its commands exist, and it builds strictly."""

import re
import subprocess
import sys

import latentgrad_tests_markdown as md  # loaded by conftest.py
import pytest

DOCS = md.REPO / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
PYTHON_PAGES = [p for p in PAGES if md.code_blocks(p, "python")]
SHELL_BLOCKS = [b for p in PAGES for b in md.code_blocks(p, "bash")]
RUN_COMMAND_BLOCKS = [b for b in SHELL_BLOCKS if b.not_run is None and md.latentgrad_commands(b)]


def _page_id(path):
    return str(path.relative_to(DOCS))


def test_there_are_pages_and_examples():
    assert PAGES and PYTHON_PAGES and RUN_COMMAND_BLOCKS


@pytest.mark.parametrize("page", PYTHON_PAGES, ids=_page_id)
def test_python_examples_run(page):
    assert md.run_python_blocks(page) > 0


@pytest.mark.parametrize("block", RUN_COMMAND_BLOCKS, ids=lambda b: b.where)
def test_latentgrad_commands_run(block, tmp_path):
    pytest.importorskip("sklearn")  # the experiments extra
    for args in md.latentgrad_commands(block):
        md.run_latentgrad(args, cwd=tmp_path)


def test_blocks_not_run_say_why():
    for page in PAGES:
        for block in md.code_blocks(page):
            assert block.not_run is None or block.not_run.strip(), block.where


def test_commands_not_run_are_still_valid(tmp_path):
    """A command left out of the tests still parses: a typo'd flag or estimator fails here."""
    pytest.importorskip("sklearn")
    from latentgrad.cli import build_parser

    for block in SHELL_BLOCKS:
        if block.not_run is None:
            continue
        for args in md.latentgrad_commands(block):
            if any("$" in arg for arg in args):
                continue  # uses a shell variable
            if args[0] == "run":  # options are per experiment: resolve them, train nothing
                md.run_latentgrad([*args, "--print-config"], cwd=tmp_path)
            else:
                build_parser().parse_args(args)


def test_quoted_make_targets_exist():
    makefile = (md.REPO / "Makefile").read_text()
    for page in PAGES:
        for target in md.make_targets(page.read_text()):
            assert re.search(rf"^{target}:", makefile, flags=re.M), (page, target)


def test_every_page_is_in_the_nav():
    config = (md.REPO / "mkdocs.yml").read_text()
    listed = set(re.findall(r":\s*(\S+\.md)\s*$", config, flags=re.M))
    assert listed == {_page_id(p) for p in PAGES}


def test_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocstrings")  # the docs extra
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=md.REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "WARNING" not in proc.stderr, proc.stderr
