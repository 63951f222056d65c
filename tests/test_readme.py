"""The README's Python examples run as written, its commands exist, and its links resolve."""

import re

import latentgrad_tests_markdown as md  # loaded by conftest.py

README = md.REPO / "README.md"


def test_readme_python_examples_run():
    assert md.run_python_blocks(README) > 0, "README has no python example"


def test_readme_commands_are_make_targets():
    makefile = (md.REPO / "Makefile").read_text()
    targets = md.make_targets(README.read_text())
    assert {"test", "demo", "docs"} <= set(targets)
    for target in targets:
        assert re.search(rf"^{target}:", makefile, flags=re.M), target


def test_readme_latentgrad_commands_run(tmp_path):
    for block in md.code_blocks(README, "bash"):
        if block.not_run is None:
            for args in md.latentgrad_commands(block):
                md.run_latentgrad(args, cwd=tmp_path)


def test_readme_links_to_docs_pages_that_exist():
    links = re.findall(r"\]\((docs/[^)#]+)", README.read_text())
    assert links, "README links to no docs page"
    for link in links:
        assert (md.REPO / link).is_file(), link


def test_ci_runs_the_readme_test_command_and_builds_the_docs():
    ci = (md.REPO / ".ci" / "run").read_text()
    assert "make test" in ci and "make test" in README.read_text()
    assert "make docs" in ci
    makefile = (md.REPO / "Makefile").read_text()
    assert re.search(r"^docs:.*\n(\t.*\n)*\t.*mkdocs build --strict", makefile, flags=re.M)
