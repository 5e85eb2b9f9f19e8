"""A Hypothesis state machine over files written by the real tools (kohya via diffusers' converter,
diffusers/PEFT with and without DoRA, LyCORIS LoHa/LoKr/LoCon): random sets, random strengths,
restores and writes that fail midway, in fp32, fp16 and bf16.

Invariants: after restore() every tensor is torch.equal to the original; after sync(plan) the
weights are torch.equal to a fresh apply of that plan to the original; a sync whose n-th write
fails leaves every tensor as it was before the call."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from loraprompt import Patcher
from loraprompt.adapters.types import Adapter
from tests.fixtures.models import tiny_sd1
from tests.patcher.helpers import FailingPatcher, assert_bit_equal, snapshot, to_dtype, tool_adapters

STRENGTH = st.sampled_from([-1.0, -0.5, 0.0, 0.25, 0.5, 1.0, 1.5])
PLAN = st.lists(st.tuples(st.integers(0, 5), STRENGTH, STRENGTH), max_size=3)


class PatcherMachine(RuleBasedStateMachine):
    """One patched model, one scratch model that gets every plan applied fresh from its base."""

    dtype = torch.float32

    def __init__(self) -> None:
        super().__init__()
        self.model = to_dtype(tiny_sd1(), self.dtype)
        self.original = snapshot(self.model)
        self.patcher = FailingPatcher(self.model)
        self.scratch = to_dtype(tiny_sd1(), self.dtype)
        self.fresh = Patcher(self.scratch)
        self.plan: list[tuple[Adapter, float, float]] = []

    def entries(self, plan: list[tuple[int, float, float]]) -> list[tuple[Adapter, float, float]]:
        return [(tool_adapters()[i], te, unet) for i, te, unet in plan]

    @rule(plan=PLAN)
    def sync(self, plan: list[tuple[int, float, float]]) -> None:
        self.plan = self.entries(plan)
        self.patcher.sync(self.plan)

    @rule(scale=STRENGTH)
    def change_strengths(self, scale: float) -> None:
        self.plan = [(a, te * scale, unet) for a, te, unet in self.plan]
        self.patcher.sync(self.plan)

    @precondition(lambda self: self.plan)
    @rule()
    def same_plan_writes_nothing(self) -> None:
        assert self.patcher.sync(self.plan).written == 0

    @rule(release=st.booleans())
    def restore(self, release: bool) -> None:
        self.patcher.restore(release=release)
        self.plan = []
        assert_bit_equal(self.model, self.original)
        if release:
            assert self.patcher.backup_nbytes == 0

    @rule(plan=PLAN, at=st.integers(1, 80))
    def failing_sync(self, plan: list[tuple[int, float, float]], at: int) -> None:
        before = snapshot(self.model)
        self.patcher.fail_at = at
        try:
            self.patcher.sync(self.entries(plan))
        except RuntimeError as exc:
            assert str(exc) == "injected"
            assert_bit_equal(self.model, before)
        else:
            self.plan = self.entries(plan)
        finally:
            self.patcher.fail_at = -1

    @invariant()
    def equals_a_fresh_apply(self) -> None:
        self.fresh.restore()
        self.fresh.sync(self.plan)
        assert_bit_equal(self.model, snapshot(self.scratch))


class HalfMachine(PatcherMachine):
    dtype = torch.float16


class BfloatMachine(PatcherMachine):
    dtype = torch.bfloat16


SETTINGS = settings(max_examples=6, stateful_step_count=6, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("machine", [PatcherMachine, HalfMachine, BfloatMachine], ids=["fp32", "fp16", "bf16"])
def test_patcher_state_machine(machine: type[PatcherMachine]) -> None:
    machine.TestCase.settings = SETTINGS
    machine.TestCase().runTest()
