"""``format_activation``: the one writer of canonical LoRA tags."""

from __future__ import annotations

from typing import Literal

from loraprompt.syntax.model import LoraActivation
from loraprompt.syntax.values import Schedule, Strength, format_number

TAG_ENDERS = ":>#"  # in a tag's name or argument: splits its items, ends it, starts a prompt comment
TAG_BREAKERS = TAG_ENDERS + "="  # and "=", which makes an item a named argument


def format_activation(activation: LoraActivation, style: Literal["a1111", "loractl"] = "a1111") -> str:
    """Write the canonical tag for ``activation``; parsing it gives the same activation back.

    ``style="a1111"`` (default) is A1111-safe: anything plain A1111 would fail on goes into keys it
    ignores (block weights as ``lbw=``; schedules as ``sched=``/``te_sched=``/``unet_sched=`` with the
    weight at position 0 written in the weight slot). ``style="loractl"`` writes keyframes in place.
    SD.Next flags (``high``/``low``) have no A1111-safe form and are written positionally.
    Equal ``te`` and ``unet`` (and ``hr_te``/``hr_unet``) are written once, NaN ones included: the
    ``a1111`` profile reads ``<lora:x:nan>`` as NaN for both (the default profile refuses NaN).

    >>> format_activation(LoraActivation("style", 0.8, 0.8))
    '<lora:style:0.8>'
    >>> format_activation(LoraActivation("x", 1.0, Schedule(((0.0, 0.0), (1.0, 1.0))), dyn=8))
    '<lora:x:1:0:dyn=8:unet_sched=0@0,1@1>'

    A name, ``module``, or extra key or value that no tag can carry raises ``ValueError``: ``:`` and
    ``>`` end it, ``#`` starts a prompt comment, and ``=`` makes an item a named argument (a name
    with exactly one; an argument's key or value with any); a blank name is no tag. The gallery
    writes such LoRAs by alias or hash name instead (``library.resolve.writable_name``, which
    counts any ``=``: ``TAG_BREAKERS``).
    """
    if not isinstance(activation, LoraActivation):
        raise TypeError(f"format_activation takes a LoraActivation (from parse(...).loras), "
                        f"not {type(activation).__name__}")
    if style not in ("a1111", "loractl"):
        raise ValueError(f"style must be 'a1111' or 'loractl', not {style!r}")
    a = activation
    _writable("name", a.name, named=a.name.count("=") == 1)
    if not a.name.strip():
        raise ValueError(f"LoRA tag name {a.name!r} is blank: a tag needs a name")
    if a.module is not None:
        _writable("module", a.module, named="=" in a.module)
    for key, value in a.extras.items():
        _writable("argument name", key, named="=" in key)
        _writable(f"value of {key}", value, named="=" in value)
    named: list[tuple[str, str]] = []
    te, unet = a.te, a.unet
    if style == "a1111" and (isinstance(te, Schedule) or isinstance(unet, Schedule)):
        if _same(te, unet):
            named.append(("sched", te.to_text()))  # type: ignore[union-attr]
        else:
            named.extend((key, v.to_text()) for key, v in (("te_sched", te), ("unet_sched", unet))
                         if isinstance(v, Schedule))
        te, unet = _at_zero(te), _at_zero(unet)
    items = [a.name, _strength(te)]
    if not _same(unet, te):
        items.append(_strength(unet))
    items.extend(a.flags)
    if a.dyn is not None:
        items.append(f"dyn={a.dyn}")
    items.extend(f"{k}={v}" for k, v in named)
    if a.lbw is not None:
        items.append(f"lbw={a.lbw}")
    optional = [
        ("x", None if a.x is None else format_number(a.x)), ("lbwe", a.lbwe),
        ("start", a.start.to_text() if a.start else None), ("stop", a.stop.to_text() if a.stop else None),
    ]
    if a.hr_te is not None and _same(a.hr_te, a.hr_unet):
        optional.append(("hr", _strength(a.hr_te)))
    else:
        optional.extend((key, None if v is None else _strength(v)) for key, v in (("hrte", a.hr_te), ("hrunet", a.hr_unet)))
    optional.extend((k, format_number(a.groups[k])) for k in ("in", "mid", "out") if k in a.groups)
    optional.extend([("module", a.module), ("hash", a.hash)])
    items.extend(f"{k}={v}" for k, v in optional if v is not None)
    items.extend(f"{k}={v}" for k, v in a.extras.items())
    return f"<{a.kind}:{':'.join(items)}>"


def _same(a: Strength | None, b: Strength | None) -> bool:
    """Equal strengths, NaN counted equal to NaN (nan != nan, but both write 'nan'; the activation's
    hash goes by repr too), so equal NaN strengths are written once, like equal numbers."""
    return a == b or repr(a) == repr(b)


def _at_zero(value: Strength) -> float:
    return value.value_at(0.0) if isinstance(value, Schedule) else value


def _strength(value: Strength) -> str:
    return value.to_text() if isinstance(value, Schedule) else format_number(value)


def _writable(what: str, text: str, *, named: bool) -> None:
    bad = sorted({c for c in text if c in TAG_ENDERS} | ({"="} if named else set()))
    if bad:
        raise ValueError(f"LoRA tag {what} {text!r} contains {' '.join(repr(c) for c in bad)}: a <lora:...> tag "
                         "cannot carry it (name the LoRA by its alias or hash name)")
