"""Prompt editing on an ambiguous prompt gives the same schedule in every process.

lark 1.1.2 (A1111's pin) resolves some ambiguous Earley parses by the iteration order of hashed sets
(lark issue #1434), so `photo, [cat:dog:0.5]]` is a schedule in one A1111 process and plain text in
the next, with PYTHONHASHSEED deciding. Inside A1111 loraprompt parses with the same lark in the same
process, so it gives that process's answer; everywhere else the lark this project resolves to (1.2.1
and later were checked) gives the schedule whatever the seed, and this test keeps it so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lark
import pytest

ROOT = Path(__file__).resolve().parents[2]
AMBIGUOUS = ["photo, [cat:dog:0.5]]", "[[a:b:0.5]", "[(x:y:3)]", "[a:b:c:0.5]]"]


@pytest.mark.skipif(tuple(int(p) for p in lark.__version__.split(".")[:3]) < (1, 2, 1),
                    reason=f"lark {lark.__version__} resolves ambiguity by hash order (#1434)")
def test_ambiguous_schedules_do_not_depend_on_the_hash_seed() -> None:
    code = ("import json, sys; from loraprompt.syntax.schedule import schedules; "
            "print(json.dumps([schedules(p, 20) for p in json.loads(sys.argv[1])]))")
    results = set()
    for seed in ("0", "1", "2", "3", "4", "5"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}
        run = subprocess.run([sys.executable, "-c", code, json.dumps(AMBIGUOUS)], capture_output=True, text=True,
                             env=env, check=True)
        results.add(run.stdout)
    assert len(results) == 1, results
    first = json.loads(results.pop())
    assert first[0] == [[10, "photo, cat]"], [20, "photo, dog]"]]
