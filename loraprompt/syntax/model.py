"""The values the parser returns: tags, LoRA activations, parsed prompts and batches (all JSON-able)."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from loraprompt.diagnostics import Diagnostic
from loraprompt.syntax.values import (
    BlockValue,
    Schedule,
    StepPoint,
    Strength,
    block_group,
    json_number,
    strength_json,
)

Profile = Literal["loraprompt", "a1111"]
_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True)
class Tag:
    """One ``<kind:args>`` tag exactly as A1111 splits it.

    ``span`` is (start, end) in ``ParsedPrompt.source`` (the comment-stripped prompt), so
    ``source[start:end] == raw``. ``items`` is ``args.split(":")``; an item with exactly one ``=`` is
    ``named`` (key -> value, last one wins, untrimmed), every other item is ``positional``.
    ``context`` lists the prompt syntax around the tag, outermost first: ``and:I`` (AND part I > 0),
    ``edit:before|after|number:N`` (``[a:b:N]`` branch and raw switch value), ``alternation:I/K``,
    ``emphasis``. By default it changes nothing: the LoRA applies to every step and part.
    """

    kind: str
    raw: str
    span: tuple[int, int]
    items: tuple[str, ...]
    positional: tuple[str, ...]
    named: Mapping[str, str]
    index: int = 0
    context: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "raw": self.raw, "span": list(self.span), "items": list(self.items),
            "positional": list(self.positional), "named": dict(self.named), "index": self.index,
            "context": list(self.context),
        }


@dataclass(frozen=True)
class LoraActivation:
    """One LoRA to apply, with every argument the prompt gave it.

    Strengths (``te``, ``unet``, ``hr_te``, ``hr_unet``) are a float or a keyframed ``Schedule``;
    ``unet`` defaults to ``te``, as in A1111.
    ``start``/``stop`` gate the whole LoRA to steps ``[start, stop)``. ``blocks`` maps lora-block-weight
    block ids (``BASE``, ``IN04``, ``M00``, ``OUT03``…) to multipliers; ``groups`` holds SD.Next's
    ``in``/``mid``/``out`` strengths. Use ``te_at``/``unet_at`` for the effective strength at a step.
    ``tag_index`` and ``span`` locate the source tag and are ignored by ``==``.

    >>> a = LoraActivation("style", te=0.8, unet=Schedule(((0.0, 0.0), (10.0, 1.0))), stop=StepPoint(8, False))
    >>> a.te_at(3, 20), a.unet_at(5, 20), a.unet_at(8, 20)
    (0.8, 0.5, 0.0)
    """

    name: str
    te: Strength = 1.0
    unet: Strength = None  # type: ignore[assignment]  # None means "same as te"
    dyn: int | None = None
    kind: str = "lora"
    start: StepPoint | None = None
    stop: StepPoint | None = None
    lbw: str | None = None
    blocks: Mapping[str, BlockValue] = field(default_factory=dict)
    x: float | None = None
    lbwe: str | None = None
    hr_te: Strength | None = None
    hr_unet: Strength | None = None
    groups: Mapping[str, float] = field(default_factory=dict)
    module: str | None = None
    hash: str | None = None
    flags: tuple[str, ...] = ()
    extras: Mapping[str, str] = field(default_factory=dict)
    tag_index: int | None = field(default=None, compare=False)
    span: tuple[int, int] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.unet is None:
            object.__setattr__(self, "unet", self.te)
        for name in ("blocks", "groups", "extras"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))

    def __hash__(self) -> int:
        return hash((self.name, self.kind, repr(self.te), repr(self.unet), self.dyn))

    def active_at(self, step: int, total_steps: int) -> bool:
        """True when 0-based ``step`` lies in ``[start, stop)``."""
        if self.start is not None and step < self.start.resolve(total_steps):
            return False
        return self.stop is None or step < self.stop.resolve(total_steps)

    def te_at(self, step: int, total_steps: int, hires: bool = False) -> float:
        """Text-encoder strength at ``step`` (0 outside start/stop), times the lbw ``BASE`` entry."""
        if not self.active_at(step, total_steps):
            return 0.0
        strength = self.hr_te if hires and self.hr_te is not None else self.te
        value = _strength_at(strength, step, total_steps)
        base = self.blocks.get("BASE", self.blocks.get("CLIP"))
        return value * _block_value(base) if base is not None else value

    def unet_at(self, step: int, total_steps: int, block: str | None = None, hires: bool = False,
                rng: random.Random | None = None) -> float:
        """UNet strength at ``step`` (0 outside start/stop); with ``block``, times its block weight.

        A group strength (``in=``/``mid=``/``out=``) replaces ``unet`` for the blocks of its group;
        lbw's random entries ``R``/``U`` draw from ``rng`` (default: a fixed seed).
        """
        if not self.active_at(step, total_steps):
            return 0.0
        strength = self.hr_unet if hires and self.hr_unet is not None else self.unet
        value = _strength_at(strength, step, total_steps)
        if block is None:
            return value
        group = block_group(block)
        if group in self.groups:
            value = self.groups[group]
        weight = self.blocks.get(block)
        return value if weight is None else value * _block_value(weight, rng)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name, "kind": self.kind, "te": strength_json(self.te),
            "unet": strength_json(self.unet), "dyn": self.dyn,
        }
        optional: dict[str, Any] = {
            "start": self.start.to_json() if self.start else None,
            "stop": self.stop.to_json() if self.stop else None,
            "lbw": self.lbw,
            "blocks": {k: v if isinstance(v, str) else json_number(v) for k, v in self.blocks.items()},
            "x": None if self.x is None else json_number(self.x), "lbwe": self.lbwe,
            "hr_te": strength_json(self.hr_te), "hr_unet": strength_json(self.hr_unet),
            "groups": {k: json_number(v) for k, v in self.groups.items()}, "module": self.module,
            "hash": self.hash, "flags": list(self.flags), "extras": dict(self.extras),
        }
        out.update({k: v for k, v in optional.items() if v not in (None, {}, [])})
        out["tag_index"] = self.tag_index
        out["span"] = list(self.span) if self.span else None
        return out


def _strength_at(strength: Strength, step: int, total_steps: int) -> float:
    return strength.at(step, total_steps) if isinstance(strength, Schedule) else strength


def _block_value(value: BlockValue, rng: random.Random | None = None) -> float:
    if isinstance(value, float):
        return value
    draw = (rng or random.Random(0)).random()
    return draw if value == "R" else draw * 2.0 - 0.5


@dataclass(frozen=True)
class ExtraActivation:
    """An activation of another registered type (``hypernet``): name and raw arguments."""

    kind: str
    name: str
    positional: tuple[str, ...]
    named: Mapping[str, str]
    tag_index: int

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "positional": list(self.positional),
                "named": dict(self.named), "tag_index": self.tag_index}


@dataclass(frozen=True)
class ParsedPrompt:
    """What ``parse`` returns.

    ``text`` is the prompt with every tag removed (byte-identical to A1111). ``source`` is the prompt
    after comment stripping, which tag spans index. ``loras`` is in application order; when
    ``a1111_drop_all`` is set (profile ``a1111`` only) it is empty, as in A1111.
    """

    text: str
    source: str
    tags: tuple[Tag, ...]
    loras: tuple[LoraActivation, ...]
    others: tuple[ExtraActivation, ...]
    diagnostics: tuple[Diagnostic, ...]
    profile: Profile = "loraprompt"
    a1111_drop_all: bool = False
    origin: tuple[int, ...] | None = field(default=None, repr=False, compare=False)

    def original_span(self, span: tuple[int, int]) -> tuple[int, int]:
        """Map a span in ``source`` back to the prompt as given (before comment stripping)."""
        if self.origin is None:
            return span
        start, end = span
        return self.origin[start], (self.origin[end - 1] + 1 if end > start else self.origin[start])

    @property
    def errors(self) -> tuple[Diagnostic, ...]:
        """The diagnostics of severity ``error``."""
        return tuple(d for d in self.diagnostics if d.severity == "error")

    def to_json(self) -> dict[str, Any]:
        return {
            "profile": self.profile, "text": self.text, "tags": [t.to_json() for t in self.tags],
            "loras": [a.to_json() for a in self.loras], "others": [o.to_json() for o in self.others],
            "diagnostics": [d.to_json() for d in self.diagnostics], "a1111_drop_all": self.a1111_drop_all,
        }


@dataclass(frozen=True)
class ParsedBatch:
    """What ``parse_batch`` returns: every prompt stripped, one LoRA set for the whole batch."""

    prompts: tuple[ParsedPrompt, ...]
    loras: tuple[LoraActivation, ...]
    diagnostics: tuple[Diagnostic, ...]

    @property
    def texts(self) -> list[str]:
        """The stripped text of every prompt, in order."""
        return [p.text for p in self.prompts]

    def to_json(self) -> dict[str, Any]:
        return {"prompts": [p.to_json() for p in self.prompts], "loras": [a.to_json() for a in self.loras],
                "diagnostics": [d.to_json() for d in self.diagnostics]}
