"""A1111 entry point: loads the glue in ../extension as the package `loraprompt_a1111` (a unique
name: every extension shares one sys.modules) and registers its callbacks."""

from __future__ import annotations

import importlib.util
import os
import sys

_NAME = "loraprompt_a1111"
_GLUE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "extension")

if _NAME not in sys.modules:
    _spec = importlib.util.spec_from_file_location(_NAME, os.path.join(_GLUE, "__init__.py"), submodule_search_locations=[_GLUE])
    assert _spec is not None and _spec.loader is not None
    sys.modules[_NAME] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules[_NAME])

from loraprompt_a1111 import callbacks  # noqa: E402
from loraprompt_a1111.script import LoraPromptScript  # noqa: E402, F401  (A1111 collects Script subclasses)

callbacks.register()
