"""One torch thread for these tests (see tests/fixtures/threads.py)."""

from __future__ import annotations

from tests.fixtures.threads import one_torch_thread  # noqa: F401  (an autouse fixture)
