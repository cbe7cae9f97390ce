"""Prefect's own standards for integration blocks (the suite prefect-aws runs on each of its
blocks) hold for every dbbackup block type: a description, a documentation URL, a
description ending in a period on every field, and a code example that imports the class
and loads a saved block (docs/python-api.md, "Block standards")."""

from __future__ import annotations

import pytest
from prefect.blocks.core import Block
from prefect.testing.standard_test_suites import BlockStandardTestSuite
from prefect_dbbackup.blocks.kinds import KINDS


@pytest.mark.parametrize("block", [k.block_class() for k in KINDS], indirect=True)
class TestAllBlocksAdhereToStandards(BlockStandardTestSuite):
    @pytest.fixture
    def block(self, request: pytest.FixtureRequest) -> type[Block]:
        return request.param


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.slug)
def test_the_code_example_is_the_docstrings_own(kind) -> None:  # noqa: ANN001
    """Prefect makes up an example when a block has none: each block writes its own."""
    cls = kind.block_class()
    assert "Example:" in (cls.__doc__ or ""), f"{cls.__name__} has no Example: section"
    assert f'{cls.__name__}.load("BLOCK_NAME")' in cls.__doc__
    assert cls.get_code_example().strip().startswith("```python\nfrom prefect_dbbackup")
