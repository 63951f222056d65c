"""The README's and docs' result tables are what their ``latentgrad report`` commands print from
the records in ``results/`` (see ``results/README.md``); ``latentgrad report --update-readme``
rewrites them. A table marked ``(no record yet)`` passes only while its records are missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from latentgrad.lab.records import find_blocks, has_records, markdown_files, render_block

ROOT = Path(__file__).resolve().parents[1]

BLOCKS = [
    pytest.param(path, block, id=f"{path.relative_to(ROOT)}:{block.command.split()[2]}")
    for path in markdown_files(ROOT)
    for block in find_blocks(path.read_text())
]


def test_the_docs_have_generated_tables():
    assert BLOCKS, "no generated table in README.md or docs/*.md"


@pytest.mark.parametrize(("path", "block"), BLOCKS)
def test_table_equals_what_its_records_give(path, block, monkeypatch):
    pytest.importorskip("numpy")  # latentgrad[experiments], as the command needs
    monkeypatch.chdir(ROOT)  # the commands name results/ relative to the repository root
    if block.no_record:
        assert not has_records(block), (
            f"{path.name}: the records of a table marked '(no record yet)' exist now; run "
            "`latentgrad report --update-readme` in the repository root"
        )
        assert block.body.lstrip().startswith("|"), "a marked block still holds a table"
        return
    assert block.body == render_block(block.command), (
        f"{path.name}: the table differs from `{block.command}`; run "
        "`latentgrad report --update-readme` in the repository root"
    )
