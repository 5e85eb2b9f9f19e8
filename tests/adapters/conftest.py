"""Session-wide cache of tool-written adapter files for the adapter tests."""

from __future__ import annotations

import pytest

from tests.fixtures.loras import ToolLoraCache


@pytest.fixture(scope="session")
def tool_loras(tmp_path_factory: pytest.TempPathFactory) -> ToolLoraCache:
    return ToolLoraCache(tmp_path_factory.mktemp("tool-loras"))
