"""``parse`` and ``parse_batch``: scan, interpret, order and check a prompt's tags."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Literal, get_args

from loraprompt.diagnostics import Diagnostic
from loraprompt.errors import PromptSyntaxError
from loraprompt.syntax.context import and_weight_traps, contexts
from loraprompt.syntax.interpret import LORA_KINDS, interpret, interpret_a1111, is_plain
from loraprompt.syntax.model import ExtraActivation, LoraActivation, ParsedBatch, ParsedPrompt, Profile, Tag
from loraprompt.syntax.scanner import OPEN_TAG_RE, scan, strip_comments, unclosed_openers
from loraprompt.syntax.values import Schedule

Duplicates = Literal["a1111", "sum", "last", "first", "error"]
_CONTEXT = {"edit": ("tag-in-edit", "inside a prompt-editing bracket"),
            "alternation": ("tag-in-edit", "inside an alternation bracket"),
            "emphasis": ("tag-in-emphasis", "inside emphasis (the emphasis does not change the LoRA)"),
            "and": ("tag-in-and", "in an AND part other than the first")}


def parse(prompt: str, profile: Profile = "loraprompt", comments: bool = True, *, negative: bool = False,
          negative_tags: Literal["keep", "strip"] = "keep", duplicates: Duplicates = "a1111",
          default_weight: float = 1.0, presets: dict[str, tuple[str, ...]] | None = None,
          extra_kinds: Iterable[str] = ("hypernet",), strict: bool = False) -> ParsedPrompt:
    """Parse one prompt: strip comments and tags, interpret LoRA tags, report what looks wrong.

    ``profile="a1111"`` reproduces A1111 v1.10.1 exactly (one bad LoRA tag empties ``loras``);
    ``"loraprompt"`` adds the extension syntaxes and keeps errors per tag. ``negative=True`` treats the
    prompt as a negative prompt (tags are never activated there). ``strict=True`` raises
    ``PromptSyntaxError`` on the first error instead of returning it.

    >>> p = parse("a, <lora:x:0.5>, b <lyco:y:te=0.3> <lora:z>")
    >>> p.text, [(a.name, a.te, a.unet) for a in p.loras]
    ('a, , b  ', [('x', 0.5, 0.5), ('z', 1.0, 1.0), ('y', 0.3, 0.3)])
    """
    _check_options(prompt, profile, negative_tags, duplicates)
    kinds = frozenset(extra_kinds)
    source, origin, comment_spans = strip_comments(prompt) if comments else (prompt, None, [])
    text, tags = scan(source)
    diagnostics: list[Diagnostic] = _comment_traps(prompt, comment_spans)
    if tags:
        cuts = _cuts(tags)
        tags = [replace(t, context=ctx) if ctx else t for t, ctx in zip(tags, contexts(text, cuts))]
        diagnostics.extend(_structure(text, tags, cuts, kinds))
    else:
        diagnostics.extend(_unclosed(text, []))
    if negative:
        diagnostics.extend(Diagnostic("tag-in-negative", f"tag {t.raw!r} in a negative prompt is encoded as text, "
                                      "never activated", t.span, subject=t.kind) for t in tags)
        keep = profile == "a1111" or negative_tags == "keep"
        result = ParsedPrompt(source if keep else text, source, tuple(tags), (), (), tuple(diagnostics), profile,
                              False, origin)
        return _checked(result, strict)
    loras, lora_diags, drop_all = _loras(tags, profile, duplicates, default_weight, presets)
    diagnostics.extend(lora_diags)
    # The name is the first item as A1111's hypernet handler reads it (``params.items[0]``), even when
    # it holds one '=' and so also counts as a named argument.
    others = tuple(ExtraActivation(t.kind, t.items[0] if t.items else "", t.positional, t.named, t.index)
                   for t in tags if t.kind in kinds)
    result = ParsedPrompt(text, source, tuple(tags), tuple(loras), others, tuple(diagnostics), profile,
                          drop_all, origin)
    return _checked(result, strict)


def parse_batch(prompts: Sequence[str], profile: Profile = "loraprompt", **options: object) -> ParsedBatch:
    """Parse a batch as A1111 does: every prompt is stripped, the first prompt's LoRAs serve all.

    >>> b = parse_batch(["a <lora:x:1>", "b <lora:y:1>"])
    >>> b.texts, [a.name for a in b.loras], [d.code for d in b.diagnostics]
    (['a ', 'b '], ['x'], ['batch-divergent'])
    """
    if isinstance(prompts, (str, bytes)):
        raise TypeError(f"parse_batch takes a list of prompts, not one {type(prompts).__name__} "
                        "(use parse for one prompt, or parse_batch([prompt]))")
    parsed = tuple(parse(p, profile, **options) for p in prompts)  # type: ignore[arg-type]
    if not parsed:
        return ParsedBatch((), (), ())
    first = parsed[0]
    diagnostics = list(first.diagnostics)
    for i, other in enumerate(parsed[1:], start=1):
        if other.loras != first.loras or other.a1111_drop_all != first.a1111_drop_all:
            diagnostics.append(Diagnostic(
                "batch-divergent", f"prompt {i} of the batch has other LoRAs "
                f"({[a.name for a in other.loras]}) than prompt 0; the first prompt's LoRAs are used",
                subject=f"prompt {i}", data={"prompt": i}))
    return ParsedBatch(parsed, first.loras, tuple(diagnostics))


def activation_from_items(items: Sequence[str], kind: str = "lora", profile: Profile = "loraprompt",
                          default_weight: float = 1.0) -> tuple[LoraActivation | None, list[Diagnostic]]:
    """Interpret an already split tag (A1111's ``ExtraNetworkParams.items``) exactly as ``parse`` would.

    This is the entry point for glue that receives A1111's parsed parameters instead of prompt text.

    >>> activation_from_items(["x", "0.5", "lbw=MIDD"])[0].blocks["M00"]
    1.0
    """
    raw = f"<{kind}:{':'.join(items)}>"
    _, tags = scan(raw)
    if len(tags) != 1 or tags[0].span != (0, len(raw)):
        raise ValueError(f"items {list(items)!r} do not form one <{kind}:...> tag (a '>' or an empty list?)")
    if profile == "a1111":
        return interpret_a1111(tags[0])
    return interpret(tags[0], default_weight)


def _check_options(prompt: object, profile: str, negative_tags: str, duplicates: str) -> None:
    """A wrong type or a misspelt option raises here, naming it, instead of a bare TypeError from
    deep inside or (for an option) silently meaning another policy."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, not {type(prompt).__name__}")
    if profile not in ("loraprompt", "a1111"):
        raise ValueError(f"unknown profile {profile!r}; use 'loraprompt' or 'a1111'")
    if negative_tags not in ("keep", "strip"):
        raise ValueError(f"negative_tags must be 'keep' or 'strip', not {negative_tags!r}")
    if duplicates not in get_args(Duplicates):
        raise ValueError(f"duplicates must be one of {', '.join(get_args(Duplicates))}, not {duplicates!r}")


def _checked(result: ParsedPrompt, strict: bool) -> ParsedPrompt:
    if strict and result.errors:
        error = result.errors[0]
        raise PromptSyntaxError(f"{error.message} (at {error.span})", error.span)
    return result


def _cuts(tags: list[Tag]) -> list[int]:
    removed = 0
    cuts = []
    for t in tags:
        cuts.append(t.span[0] - removed)
        removed += t.span[1] - t.span[0]
    return cuts


def _comment_traps(prompt: str, comment_spans: list[tuple[int, int]]) -> list[Diagnostic]:
    out = []
    for start, end in comment_spans:
        line = prompt[prompt.rfind("\n", 0, start) + 1:start]
        opener = [m for m in OPEN_TAG_RE.finditer(line) if ">" not in line[m.end():]]
        if opener:
            out.append(Diagnostic("comment-in-tag", f"'#' at {start} starts a comment inside the unclosed tag "
                                  f"{line[opener[-1].start():]!r}; the rest of the line is removed (no escape)",
                                  None, data={"original_span": [start, end]}))
    return out


def _structure(text: str, tags: list[Tag], cuts: list[int], extra_kinds: frozenset[str]) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    for t in tags:
        if t.kind not in LORA_KINDS and t.kind not in extra_kinds:
            case = t.kind.lower() in LORA_KINDS
            out.append(Diagnostic("type-case" if case else "type-unknown",
                                  f"tag type {t.kind!r} is " + (f"not {t.kind.lower()!r} (types are case-sensitive)"
                                                                if case else "not registered") + "; it is removed "
                                  "from the prompt and ignored", t.span, subject=t.kind))
        if OPEN_TAG_RE.search(t.raw, 1):
            out.append(Diagnostic("tag-swallowed", f"tag {t.raw!r} contains another '<type:'; an unclosed tag ran "
                                  "on to the next '>'", t.span, subject=t.kind))
        elif "\n" in t.raw:
            out.append(Diagnostic("unclosed-tag", f"tag {t.raw!r} runs past the end of its line", t.span,
                                  subject=t.kind))
        for frame in dict.fromkeys(f.split(":", 1)[0] for f in t.context):
            if t.kind in LORA_KINDS:
                code, where = _CONTEXT[frame]
                out.append(Diagnostic(code, f"tag {t.raw!r} {where} applies to every step and every AND part, "
                                      "at its written weight", t.span, subject=t.kind))
    out.extend(_unclosed(text, cuts))
    return out


def _unclosed(text: str, cuts: list[int]) -> list[Diagnostic]:
    out = [Diagnostic("unclosed-tag", f"{text[m.start():m.start() + 40]!r} is not closed with '>'; "
                      "it stays in the prompt as text", None, data={"text_span": [m.start(), m.end()]})
           for m in unclosed_openers(text)]
    out.extend(Diagnostic("andweight-from-tag", f"{text[a:b].strip()!r} after a tag becomes the AND weight of "
                          "the whole prompt part, not a LoRA weight", None, data={"text_span": [a, b]})
               for a, b in and_weight_traps(text, cuts))
    return out


def _loras(tags: list[Tag], profile: Profile, duplicates: Duplicates, default_weight: float,
           presets: dict[str, tuple[str, ...]] | None) -> tuple[list[LoraActivation], list[Diagnostic], bool]:
    """Activations in A1111's application order (by first-seen type), then the duplicate policy."""
    order = list(dict.fromkeys(t.kind for t in tags if t.kind in LORA_KINDS))
    ordered = [t for kind in order for t in tags if t.kind == kind]
    diagnostics: list[Diagnostic] = []
    loras: list[LoraActivation] = []
    a1111_fails = False
    for tag in ordered:
        if profile == "a1111":
            activation, diags = interpret_a1111(tag)
            a1111_fails = a1111_fails or activation is None
        else:
            activation, diags = interpret(tag, default_weight, presets)
            a1111_fails = a1111_fails or (not is_plain(tag) and interpret_a1111(tag)[0] is None)
        diagnostics.extend(diags)
        if activation is not None:
            loras.append(activation)
    if a1111_fails:
        diagnostics.append(Diagnostic(
            "a1111-drop-all", "A1111 drops every LoRA of this prompt (and batch) because one LoRA tag fails"
            + ("" if profile == "a1111" else "; loraprompt applies the valid ones"),
            severity="error" if profile == "a1111" else "info"))
        if profile == "a1111":
            return [], diagnostics, True
    loras, dup_diags = _deduplicate(loras, duplicates)
    return loras, diagnostics + dup_diags, False


def _deduplicate(loras: list[LoraActivation], policy: Duplicates) -> tuple[list[LoraActivation], list[Diagnostic]]:
    by_name: dict[str, list[int]] = {}
    for i, a in enumerate(loras):
        by_name.setdefault(a.name, []).append(i)
    diagnostics: list[Diagnostic] = []
    drop: set[int] = set()
    result = list(loras)
    for name, idx in by_name.items():
        if len(idx) < 2:
            continue
        last = loras[idx[-1]]
        if policy == "a1111":
            for i in idx:
                result[i] = replace(loras[i], te=last.te, unet=last.unet, dyn=last.dyn)
            effect = f"A1111 applies it {len(idx)} times at the last weights (te {_show(last.te)}, " \
                     f"unet {_show(last.unet)}): {len(idx)} x last, not the sum"
        elif policy == "error":
            drop.update(idx)
            effect = "duplicates are rejected (duplicates='error')"
        elif policy == "sum" and all(not isinstance(loras[i].te, Schedule) and not isinstance(loras[i].unet, Schedule)
                                     for i in idx):
            te_total = sum(_static(loras[i].te) for i in idx)
            result[idx[0]] = replace(loras[idx[0]], te=te_total, unet=sum(_static(loras[i].unet) for i in idx))
            drop.update(idx[1:])
            effect = f"weights are summed: te {_show(result[idx[0]].te)}, unet {_show(result[idx[0]].unet)}"
        else:
            keep = idx[0] if policy == "first" else idx[-1]
            drop.update(i for i in idx if i != keep)
            effect = f"only the {'first' if policy == 'first' else 'last'} occurrence is applied"
        diagnostics.append(Diagnostic("duplicate", f"LoRA {name!r} appears {len(idx)} times; {effect}",
                                      loras[idx[-1]].span, "error" if policy == "error" else "warning", name,
                                      {"count": len(idx)}))
    return [a for i, a in enumerate(result) if i not in drop], diagnostics


def _static(value: float | Schedule) -> float:
    assert not isinstance(value, Schedule)
    return value


def _show(value: float | Schedule) -> str:
    return value.to_text() if isinstance(value, Schedule) else repr(value)
