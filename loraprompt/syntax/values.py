"""Value grammar of tag arguments: numbers, keyframe schedules, step points and block weights."""

from __future__ import annotations

import math
import re
from bisect import bisect_right
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

Unit = Literal["fraction", "step"]

_CANONICAL = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
_KF_SPLIT = re.compile(r"[,;]")
_POS_SPLIT = re.compile(r"[@~]")


def is_canonical_number(text: str) -> bool:
    """True for the one number spelling the formatter writes: ``["-"] DIGITS ["." DIGITS]`` (ASCII)."""
    return _CANONICAL.fullmatch(text) is not None


def format_number(value: float) -> str:
    """Write a float in canonical form (no exponent, no trailing ``.0``) that reads back exactly.

    >>> format_number(0.8), format_number(1.0), format_number(-0.25), format_number(1e-7)
    ('0.8', '1', '-0.25', '0.0000001')
    """
    if not math.isfinite(value):
        return repr(value)
    if value == int(value):
        return str(int(value)) if value or math.copysign(1.0, value) > 0 else "-0"
    return format(Decimal(repr(value)), "f")


@dataclass(frozen=True)
class Schedule:
    """A keyframed strength (loractl semantics): ``(position, weight)`` pairs sorted by position.

    Positions are fractions of the pass when the largest is <= 1, else absolute 0-based steps.
    Between keyframes the weight is interpolated linearly; beyond the ends it is constant.

    >>> s = Schedule(((0.0, 0.0), (1.0, 1.0)))
    >>> s.unit, s.at(0, 12), s.at(5, 12), s.at(11, 12)
    ('fraction', 0.0, 0.5, 1.0)
    """

    keyframes: tuple[tuple[float, float], ...]

    @property
    def unit(self) -> Unit:
        """``fraction`` when every position is <= 1 (loractl's rule), else ``step``."""
        return "fraction" if self.keyframes[-1][0] <= 1.0 else "step"

    def at(self, step: int, total_steps: int, normalisation: Literal["loractl", "linear"] = "loractl") -> float:
        """The weight at 0-based ``step`` of a ``total_steps`` pass."""
        x = float(step)
        if self.unit == "fraction":
            offset = 2 if normalisation == "loractl" else 1
            x = step / max(total_steps - offset, 1) if total_steps > 0 else 1.0
        return self.value_at(x)

    def value_at(self, position: float) -> float:
        """The interpolated weight at ``position`` (in the schedule's own unit)."""
        positions = [p for p, _ in self.keyframes]
        if position <= positions[0]:
            return self.keyframes[0][1]
        if position >= positions[-1]:
            return self.keyframes[-1][1]
        j = bisect_right(positions, position) - 1
        (p0, w0), (p1, w1) = self.keyframes[j], self.keyframes[j + 1]
        return w0 + (w1 - w0) * (position - p0) / (p1 - p0)

    def to_text(self) -> str:
        """The canonical ``w@pos,w@pos`` spelling."""
        return ",".join(f"{format_number(w)}@{format_number(p)}" for p, w in self.keyframes)

    def to_json(self) -> dict[str, Any]:
        return {"keyframes": [[json_number(p), json_number(w)] for p, w in self.keyframes], "unit": self.unit}


Strength = float | Schedule


@dataclass(frozen=True)
class StepPoint:
    """A step boundary as written: a fraction of the pass when the text had a ``.``, else a step."""

    value: float
    fraction: bool

    def resolve(self, total_steps: int) -> int:
        """The 0-based step number in a ``total_steps`` pass (A1111's ``int()`` truncation)."""
        return int(self.value * total_steps) if self.fraction else int(self.value)

    def to_text(self) -> str:
        text = format_number(self.value)
        return text + ".0" if self.fraction and "." not in text else text

    def to_json(self) -> dict[str, Any]:
        return {"value": json_number(self.value), "unit": "fraction" if self.fraction else "step"}


def json_number(value: float) -> float | str:
    """Non-finite floats become the strings ``inf``/``-inf``/``nan`` so that output stays JSON."""
    return value if math.isfinite(value) else repr(value)


def strength_json(value: Strength | None) -> Any:
    """JSON form of a static or keyframed strength."""
    if value is None:
        return None
    return value.to_json() if isinstance(value, Schedule) else json_number(value)


def parse_schedule(text: str) -> Schedule:
    """Parse loractl keyframes ``w@pos,w@pos`` (``;`` and ``~`` accepted); ValueError when malformed.

    >>> parse_schedule("1@0.5, 0@0").keyframes
    ((0.0, 0.0), (0.5, 1.0))
    >>> parse_schedule("0.5").keyframes  # a keyframe without a position sits at 1 (loractl)
    ((1.0, 0.5),)
    """
    frames: list[tuple[float, float]] = []
    for part in _KF_SPLIT.split(text):
        pieces = _POS_SPLIT.split(part)
        if len(pieces) > 2:
            raise ValueError(f"keyframe {part!r} has more than one '@'")
        weight = float(pieces[0])
        position = float(pieces[1]) if len(pieces) == 2 else 1.0
        frames.append((position, weight))
    frames.sort(key=lambda f: f[0])
    return Schedule(tuple(frames))


def looks_like_schedule(text: str) -> bool:
    """A weight is a keyframe list when it contains ``@`` or ``~``."""
    return "@" in text or "~" in text


def parse_step_point(text: str) -> StepPoint:
    """``start=``/``stop=`` values: a ``.`` makes a fraction (A1111's prompt-editing rule); ValueError
    for what is not a finite number (``1e400``, ``nan``: no step can be computed from them)."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return StepPoint(value, "." in text)


# lora-block-weight's block ids per vector length (facts from its documentation)
_SD1_26 = ["BASE", *(f"IN{i:02d}" for i in range(12)), "M00", *(f"OUT{i:02d}" for i in range(12))]
_SDXL_20 = ["BASE", *(f"IN{i:02d}" for i in range(9)), "M00", *(f"OUT{i:02d}" for i in range(9))]
BLOCK_IDS: dict[int, tuple[str, ...]] = {
    12: ("BASE", "IN04", "IN05", "IN07", "IN08", "M00", "OUT00", "OUT01", "OUT02", "OUT03", "OUT04", "OUT05"),
    17: ("BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00",
         "OUT03", "OUT04", "OUT05", "OUT06", "OUT07", "OUT08", "OUT09", "OUT10", "OUT11"),
    20: tuple(_SDXL_20),
    26: tuple(_SD1_26),
    61: ("CLIP", "T5", "IN", *(f"D{i:02d}" for i in range(19)), *(f"S{i:02d}" for i in range(38)), "OUT"),
}


def _vec(text: str) -> tuple[str, ...]:
    return tuple(text.split(","))


# lora-block-weight's default presets (names are case-sensitive)
LBW_PRESETS: dict[str, tuple[str, ...]] = {
    "NONE": _vec("0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0"),
    "ALL": _vec("1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1"),
    "INS": _vec("1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0"),
    "IND": _vec("1,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0,0"),
    "INALL": _vec("1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0"),
    "MIDD": _vec("1,0,0,0,1,1,1,1,1,1,1,1,0,0,0,0,0"),
    "OUTD": _vec("1,0,0,0,0,0,0,0,1,1,1,1,0,0,0,0,0"),
    "OUTS": _vec("1,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1"),
    "OUTALL": _vec("1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1"),
    "ALL0.5": _vec(",".join(["0.5"] * 17)),
    "FLUXALL": _vec(",".join(["1"] * 61)),
}

_SPECIAL = re.compile(r"(R|U|X)|X([+-].+)")
BlockValue = float | str


class BlockWeightError(ValueError):
    """An lbw value that is neither a known preset nor a block vector; ``code`` says which."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def parse_block_vector(text: str, x: float | None, presets: dict[str, tuple[str, ...]] | None = None) -> dict[str, BlockValue]:
    """Block id -> multiplier for a preset name or a comma vector; ``R``/``U`` stay as strings.

    >>> parse_block_vector("MIDD", None)["M00"], parse_block_vector("1,0,X,X-0.5,R,1,1,1,1,1,1,1", 2.0)["IN05"]
    (1.0, 2.0)
    """
    table = LBW_PRESETS if presets is None else presets
    values = table.get(text)
    if values is None:
        if "," not in text:
            raise BlockWeightError("lbw-preset", f"unknown block-weight preset {text!r}")
        values = tuple(text.split(","))
    ids = BLOCK_IDS.get(len(values))
    if ids is None:
        raise BlockWeightError("lbw-length", f"block vector has {len(values)} values; expected one of 12, 17, 20, 26 or 61")
    out: dict[str, BlockValue] = {}
    for block, raw in zip(ids, values):
        value = raw.strip()
        special = _SPECIAL.fullmatch(value)
        if special is None:
            out[block] = _block_number(value)
        elif special.group(1) in ("R", "U"):
            out[block] = special.group(1)
        else:
            if x is None:
                raise BlockWeightError("lbw-x-missing", f"block {block} uses {value!r} but no x= value is given")
            out[block] = x + (_block_number(special.group(2)) if special.group(2) else 0.0)
    return out


def _block_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise BlockWeightError("lbw-value", f"block value {text!r} is not a number") from None
    if not math.isfinite(value):  # an infinite multiplier would write inf/NaN into the weights
        raise BlockWeightError("lbw-value", f"block value {text!r} is not a finite number")
    return value


def is_block_weight_text(text: str, presets: dict[str, tuple[str, ...]] | None = None) -> bool:
    """True when ``text`` is a preset name or a vector of a valid length (the positional lbw form)."""
    table = LBW_PRESETS if presets is None else presets
    return text in table or ("," in text and len(text.split(",")) in BLOCK_IDS)


def block_group(block: str) -> Literal["te", "in", "mid", "out"]:
    """Which coarse group (SD.Next's ``in``/``mid``/``out``, or the text encoder) a block id is in."""
    if block in ("BASE", "CLIP", "T5"):
        return "te"
    if block.startswith("IN") or block.startswith("D"):
        return "in"
    if block.startswith("M"):
        return "mid"
    return "out"
