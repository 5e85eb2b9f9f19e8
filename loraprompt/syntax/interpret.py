"""Meaning of one ``lora``/``lyco`` tag: A1111's rules, and loraprompt's extensions on top."""

from __future__ import annotations

import math
import re
from typing import Any

from loraprompt.diagnostics import Diagnostic, Severity
from loraprompt.syntax.model import LoraActivation, Tag
from loraprompt.syntax.values import (
    BlockValue,
    BlockWeightError,
    Strength,
    is_block_weight_text,
    is_canonical_number,
    looks_like_schedule,
    parse_block_vector,
    parse_schedule,
    parse_step_point,
)

LORA_KINDS = ("lora", "lyco")
KNOWN_KEYS = frozenset({
    "te", "unet", "dyn", "lbw", "w", "lbwe", "start", "stop", "step", "x", "hr", "hrte", "hrunet",
    "in", "mid", "out", "module", "hash", "sched", "te_sched", "unet_sched",
})
FLAGS = ("high", "low")
_CANONICAL = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
_HASH = re.compile(r"[0-9a-fA-F]{10}|[0-9a-fA-F]{12}|[0-9a-fA-F]{64}")


class _Reader:
    """Collects the diagnostics of one tag while its arguments are read."""

    def __init__(self, tag: Tag) -> None:
        self.tag = tag
        self.diagnostics: list[Diagnostic] = []
        self.failed = False

    def report(self, code: str, message: str, severity: Severity = "warning", **data: Any) -> None:
        subject = self.tag.positional[0] if self.tag.positional else None
        self.diagnostics.append(Diagnostic(code, f"{message} in {self.tag.raw!r}", self.tag.span, severity, subject, data))
        if severity == "error":
            self.failed = True

    def number(self, text: str, what: str) -> float | None:
        """A float as Python reads it, with loraprompt's checks; None (and an error) when invalid."""
        try:
            value = float(text)
        except ValueError:
            hint = "; the decimal separator is '.'" if re.fullmatch(r"\s*[-+]?\d+,\d+\s*", text) else ""
            self.report("weight-syntax", f"{what} {text!r} is not a number{hint}", "error")
            return None
        if not math.isfinite(value):
            self.report("weight-nonfinite", f"{what} {text!r} is not finite", "error")
            return None
        if not is_canonical_number(text):
            self.report("number-noncanonical", f"{what} {text!r} is accepted but not canonical (write {value!r})")
        return value

    def strength(self, text: str, what: str) -> Strength | None:
        """A number or a loractl keyframe list; None for an empty value (the default applies)."""
        if text == "":
            self.report("weight-empty", f"empty {what}; the default is used (plain A1111 drops every LoRA here)")
            return None
        if looks_like_schedule(text):
            try:
                schedule = parse_schedule(text)
            except ValueError as exc:
                self.report("weight-syntax", f"{what} {text!r} is not a keyframe list ({exc})", "error")
                return None
            if not all(math.isfinite(v) for kf in schedule.keyframes for v in kf):
                self.report("weight-nonfinite", f"{what} {text!r} has a non-finite keyframe", "error")
                return None
            return schedule
        return self.number(text, what)


def interpret_a1111(tag: Tag) -> tuple[LoraActivation | None, list[Diagnostic]]:
    """A1111 v1.10.1's reading: te/unet/dyn only; any failure is an error (A1111 drops every LoRA)."""
    r = _Reader(tag)
    p, n = tag.positional, tag.named
    if not p:
        r.report("name-missing", "no name (every item is a key=value pair)", "error")
        return None, r.diagnostics
    values: dict[str, Any] = {}
    for key, slot, default, convert in (("te", 1, 1.0, float), ("unet", 2, None, float), ("dyn", 3, None, int)):
        values[key] = values["te"] if key == "unet" else default
        texts = ([p[slot]] if len(p) > slot else []) + ([n[key]] if key in n else [])
        for text in texts:  # positional first, then the named override, as A1111 evaluates them
            try:
                values[key] = convert(text)
            except ValueError:
                what = "an integer" if key == "dyn" else "a number"
                r.report("dyn-syntax" if key == "dyn" else "weight-syntax", f"{key} {text!r} is not {what}", "error")
                return None, r.diagnostics
    if r.failed:
        return None, r.diagnostics
    extras = {k: v for k, v in n.items() if k not in ("te", "unet", "dyn")}
    return LoraActivation(p[0], values["te"], values["unet"], values["dyn"], tag.kind, extras=extras,
                          tag_index=tag.index, span=tag.span), r.diagnostics


def is_plain(tag: Tag) -> bool:
    """The common form ``<lora:name[:te[:unet]]>`` with canonical numbers: both profiles agree on it."""
    p = tag.positional
    return (bool(p) and not tag.named and len(p) <= 3 and p[0].strip() != ""
            and all(_CANONICAL.fullmatch(v) is not None for v in p[1:]))


def interpret(tag: Tag, default_weight: float = 1.0,
              presets: dict[str, tuple[str, ...]] | None = None) -> tuple[LoraActivation | None, list[Diagnostic]]:
    """loraprompt's reading of one tag; errors stay with this tag (None plus diagnostics)."""
    p, n = tag.positional, tag.named
    if p and is_plain(tag):  # fast path for the everyday tag; same result as the general path below
        weight = float(p[1]) if len(p) > 1 else default_weight
        return LoraActivation(p[0], weight, float(p[2]) if len(p) > 2 else weight, None, tag.kind,
                              tag_index=tag.index, span=tag.span), []
    r = _Reader(tag)
    if not p:
        r.report("name-missing", "no name (every item is a key=value pair)", "error")
        return None, r.diagnostics
    name = p[0]
    if not name.strip():
        r.report("name-empty", "the name is empty", "error")
    first = tag.items[0].split("=", 2)
    if len(first) == 2 and first[0] not in KNOWN_KEYS:
        r.report("name-has-equals", f"the name is {name!r} because {tag.items[0]!r} reads as key=value; "
                 "a name cannot contain '='")
    for key in n:
        if key not in KNOWN_KEYS:
            spaced = key.strip() in KNOWN_KEYS
            r.report("key-spaced" if spaced else "key-unknown",
                     f"key {key!r} " + ("only matches after trimming and is ignored" if spaced else "is not known"))
    flags = tuple(v for v in p[1:] if v in FLAGS)
    slot = [v if v not in FLAGS else None for v in p]
    te = r.strength(slot[1], "te") if len(slot) > 1 and slot[1] is not None else None
    te = _override(r, n, "te", te)
    te_value: Strength = default_weight if te is None else te
    lbw_text: str | None = n.get("lbw", n.get("w"))
    x_text = n.get("x")
    unet: Strength | None = None
    dyn_text = n.get("dyn")
    if len(slot) > 2 and slot[2] is not None:
        if slot[2] != "" and not looks_like_schedule(slot[2]) and _not_float(slot[2]) and is_block_weight_text(slot[2], presets):
            r.report("lbw-positional", "block weights in the unet slot; plain A1111 drops all LoRAs on this form, "
                     "write lbw=", "info")
            lbw_text = lbw_text if lbw_text is not None else slot[2]
            if len(slot) > 3 and slot[3] is not None and x_text is None:
                x_text = slot[3]
        else:
            unet = r.strength(slot[2], "unet")
            if len(slot) > 3 and slot[3] is not None and dyn_text is None:
                dyn_text = slot[3]
    elif len(slot) > 3 and slot[3] is not None and dyn_text is None:
        dyn_text = slot[3]
    if len(p) > 4:
        r.report("extra-positional", f"positional items after the 4th are ignored: {list(p[4:])!r}")
    unet = _override(r, n, "unet", unet)
    unet_value: Strength = te_value if unet is None else unet
    if "sched" in n:
        sched = r.strength(n["sched"], "sched")
        te_value, unet_value = (sched, sched) if sched is not None else (te_value, unet_value)
    for key in ("te_sched", "unet_sched"):
        if key in n and (sched := r.strength(n[key], key)) is not None:
            te_value, unet_value = (sched, unet_value) if key == "te_sched" else (te_value, sched)
    dyn = _dyn(r, dyn_text)
    x = r.number(x_text, "x") if x_text is not None else None
    blocks = _blocks(r, lbw_text, x, presets)
    groups = {k: v for k in ("in", "mid", "out") if k in n and (v := r.number(n[k], k)) is not None}
    if groups and blocks:
        r.report("lbw-groups-conflict", "both lbw and in/mid/out are given; lbw wins")
        groups = {}
    start, stop = _steps(r, n)
    hr = r.strength(n["hr"], "hr") if "hr" in n else None
    hr_te = _override(r, n, "hrte", hr)
    hr_unet = _override(r, n, "hrunet", hr)
    digest = n.get("hash")
    if digest is not None and not _HASH.fullmatch(digest):
        r.report("hash-syntax", f"hash {digest!r} is not 10, 12 or 64 hex digits", "error")
    if r.failed:
        return None, r.diagnostics
    extras = {k: v for k, v in n.items() if k not in KNOWN_KEYS}
    return LoraActivation(
        name, te_value, unet_value, dyn, tag.kind, start, stop, lbw_text if blocks else None, blocks, x,
        n.get("lbwe"), hr_te, hr_unet, groups, n.get("module"), digest, flags, extras, tag.index, tag.span,
    ), r.diagnostics


def _not_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return True
    return False


def _override(r: _Reader, named: dict[str, str] | Any, key: str, current: Strength | None) -> Strength | None:
    if key not in named:
        return current
    value = r.strength(named[key], key)
    return current if value is None else value


def _dyn(r: _Reader, text: str | None) -> int | None:
    if text is None:
        return None
    if text == "":
        r.report("weight-empty", "empty dyn; ignored")
        return None
    try:
        return int(text)
    except ValueError:
        r.report("dyn-syntax", f"dyn {text!r} is not an integer", "error")
        return None


def _blocks(r: _Reader, text: str | None, x: float | None,
            presets: dict[str, tuple[str, ...]] | None) -> dict[str, BlockValue]:
    if text is None:
        return {}
    try:
        return parse_block_vector(text, x, presets)
    except BlockWeightError as exc:
        r.report(exc.code, str(exc), "error")
        return {}


def _steps(r: _Reader, named: Any) -> tuple[Any, Any]:
    points: dict[str, Any] = {"start": None, "stop": None}
    texts = {k: named[k] for k in ("start", "stop") if k in named}
    if "step" in named:
        bounds = named["step"].split("-")
        if len(bounds) != 2:
            r.report("step-syntax", f"step {named['step']!r} is not a range a-b", "error")
        else:
            texts.setdefault("start", bounds[0])
            texts.setdefault("stop", bounds[1])
    for key, text in texts.items():
        try:
            points[key] = parse_step_point(text)
        except ValueError:
            r.report("step-syntax", f"{key} {text!r} is not a finite number", "error")
    return points["start"], points["stop"]
