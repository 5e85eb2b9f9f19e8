"""Fixtures shared by every suite (kept import-light: the syntax tables also run here under the
A1111 stand-in venv, which has no torch)."""

from tests.fixtures.browser import browser

__all__ = ["browser"]
