"""The `lora` extra network (alias `lyco`) backed by loraprompt.

A1111 calls `activate(p, params)` for every registered network before each batch, for the hires
pass, and with an empty list when the prompt mentions none; each call replaces the previous one.
So `activate` always syncs: an empty list restores the base weights exactly.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from typing import Any, Literal

from modules import extra_networks

import loraprompt
from loraprompt.diagnostics import Diagnostic
from loraprompt.infotext import format_lora_hashes

from . import coexist, embeddings, webui
from .runtime import Runtime, library_entries

SHOWN = ("error", "warning")
_SPEC_CODE = re.compile(r"[EWI]-[A-Z0-9]+(?:-[A-Z0-9]+)*")
log = logging.getLogger("loraprompt")


def tag_text(params: Any) -> str:
    """The tag A1111 parsed into `params` (its items joined back with `:`)."""
    return "<lora:" + ":".join(str(item) for item in params.items) + ">"


def batch_prompts(p: Any) -> list[str]:
    """The raw prompts (tags still in) of the batch being activated."""
    prompts = list(getattr(p, "all_prompts", None) or [])
    size = int(getattr(p, "batch_size", 1) or 1)
    start = int(getattr(p, "iteration", 0) or 0) * size
    return prompts[start : start + size]


def divergent_batch(p: Any, profile: Literal["loraprompt", "a1111"]) -> list[Diagnostic]:
    """Warn when later prompts of the batch ask for other LoRAs (the first prompt's set applies)."""
    prompts = batch_prompts(p)
    if len(prompts) < 2:
        return []
    first = loraprompt.parse(prompts[0], profile=profile).loras
    differing = [i + 1 for i, text in enumerate(prompts[1:], start=1) if loraprompt.parse(text, profile=profile).loras != first]
    if not differing:
        return []
    return [
        Diagnostic(
            "W-BATCH-DIVERGENT",
            f"images {', '.join(map(str, differing))} of the batch ask for other LoRAs than image 1; a "
            "batch shares one set of weights, so the first prompt's LoRAs were applied to all of them "
            "(use batch size 1 for per-image LoRAs)",
        )
    ]


def with_sd_lora(p: Any, params_list: list[Any], available: Callable[[str], bool]) -> list[Any]:
    """Honour the built-in's "Add network to prompt" option (`sd_lora`) as the built-in does: only
    for a file stem `available` knows, when the prompt does not mention it already, and only while
    the built-in is enabled (it registers the option; config.json keeps it, unseen, once disabled)."""
    extra = str(webui.opt("sd_lora", "None") or "None") if webui.registered("sd_lora") else "None"
    if extra == "None" or any(x.items and x.items[0] == extra for x in params_list) or not available(extra):
        return params_list
    weight = webui.opt("extra_networks_default_multiplier", 1.0)
    tag = f"<lora:{extra}:{weight}>"
    p.all_prompts = [x if tag in x else x + tag for x in getattr(p, "all_prompts", None) or []]
    return [*params_list, extra_networks.ExtraNetworkParams(items=[extra, str(weight)])]


def hires_activation(p: Any, params_list: list[Any]) -> bool:
    """True for the hires pass, including A1111's lowvram early hires-conds activation."""
    # lowvram activates p.hr_extra_network_data before setting is_hr_pass: same param objects
    if getattr(p, "is_hr_pass", False):
        return True
    hires_data = getattr(p, "hr_extra_network_data", None) or {}
    ids = {id(x) for items in hires_data.values() for x in items}
    return bool(params_list) and all(id(x) in ids for x in params_list)


def pass_steps(p: Any, hires: bool) -> int:
    """Sampling steps of the current pass (hires steps fall back to the first pass's)."""
    steps = int(getattr(p, "steps", 20) or 20)
    if hires:
        return int(getattr(p, "hr_second_pass_steps", 0) or 0) or steps
    return steps


def infotext_code(d: Diagnostic) -> str:
    """The code as the spec writes it (section 4.8): severity letter, then the code in capitals,
    e.g. `E-WEIGHT-SYNTAX` for the parser's `weight-syntax`; codes already written so are kept."""
    if _SPEC_CODE.fullmatch(d.code):
        return d.code
    return f"{d.severity[:1].upper()}-{d.code.upper()}"


def note(p: Any, diagnostics: list[Diagnostic], in_infotext: bool) -> None:
    """Show diagnostics under the image (`p.comment`) and, compactly, in the infotext."""
    shown = [d for d in diagnostics if d.severity in SHOWN]
    for d in shown:
        p.comment(f"loraprompt {d.severity}: {d.message}")
        if d.severity == "error" and webui.opt("loraprompt_error_popups", True):
            webui.popup(f"loraprompt: {d.message}")
    if not shown or not in_infotext:
        return
    codes: list[str] = list(getattr(p, "loraprompt_notes", []))
    for d in shown:
        subject = os.path.splitext(os.path.basename(d.subject))[0] if d.subject else ""
        label = f"{infotext_code(d)} {subject}" if subject else infotext_code(d)
        if label not in codes:
            codes.append(label)
    p.loraprompt_notes = codes
    p.extra_generation_params["loraprompt"] = "; ".join(codes)


class LoraPromptNetwork(extra_networks.ExtraNetwork):
    """Parses the tags A1111 hands over with loraprompt and syncs the patcher."""

    def __init__(self, runtime: Runtime) -> None:
        super().__init__("lora")
        self.runtime = runtime

    def activate(self, p: Any, params_list: list[Any]) -> None:
        """Apply exactly the LoRAs of `params_list` (none: restore)."""
        profile = webui.profile()
        hires = hires_activation(p, params_list)
        params_list = with_sd_lora(p, params_list, self._is_stem)
        parsed = loraprompt.parse("".join(tag_text(x) for x in params_list), profile=profile, comments=False)
        diagnostics = list(parsed.diagnostics)
        if not hires:
            diagnostics += divergent_batch(p, profile)
        busy = coexist.builtin_busy()
        if busy:
            self.runtime.restore()
            diagnostics.append(
                Diagnostic(
                    "E-TWO-HANDLERS",
                    f"A1111's built-in Lora extension is applying {', '.join(busy)} (driven by another "
                    "extension); loraprompt stepped back for this generation so that only one of them "
                    "patches the weights. " + coexist.NOTICE,
                    severity="error",
                )
            )
            note(p, diagnostics, bool(webui.opt("loraprompt_diagnostics_in_infotext", True)))
            return
        sd_model = getattr(p, "sd_model", None) or webui.loaded_model()
        unsupported = coexist.builtin_model(sd_model)
        if unsupported is not None:  # SD3 without the built-in (with it, the tags went to it)
            self.runtime.restore()
            if params_list:
                diagnostics.append(Diagnostic("E-MODEL-UNSUPPORTED", coexist.unsupported_notice(unsupported),
                                              severity="error"))
            note(p, diagnostics, bool(webui.opt("loraprompt_diagnostics_in_infotext", True)))
            return
        try:
            applied = self.runtime.apply(
                sd_model,
                webui.model_components(sd_model),
                webui.model_family(sd_model) if webui.opt("loraprompt_family_check", True) else "",
                parsed.loras,
                hires=hires,
                total_steps=pass_steps(p, hires),
                profile=profile,
            )
        except Exception as exc:  # shown under the image too, not only in the console
            log.exception("loraprompt: applying %s failed", [a.name for a in parsed.loras])
            self.runtime.restore()
            embeddings.sync(sd_model, [])
            diagnostics.append(Diagnostic("E-APPLY", f"no LoRA applied: {exc}", severity="error"))
            note(p, diagnostics, bool(webui.opt("loraprompt_diagnostics_in_infotext", True)))
            return
        applied.diagnostics += embeddings.sync(sd_model, applied.adapters)
        self._write_hashes(p, applied.hashes, hires)
        self._note_use(p, applied.paths)
        note(p, diagnostics + applied.diagnostics, bool(webui.opt("loraprompt_diagnostics_in_infotext", True)))

    def _is_stem(self, name: str) -> bool:
        """True when a LoRA file has this stem (A1111's `available_networks` keys)."""
        return any(e.name == name for e in library_entries(self.runtime.library))

    def deactivate(self, p: Any) -> None:
        """Nothing to do: the weights stay patched until the next activate syncs (diffed)."""

    def _note_use(self, p: Any, paths: list[str]) -> None:
        """Count each applied LoRA once per generation job (its batches and hires pass re-activate)."""
        seen: set[str] = getattr(p, "loraprompt_used", None) or set()
        self.runtime.note_use(x for x in paths if x not in seen)
        p.loraprompt_used = seen | set(paths)

    @staticmethod
    def _write_hashes(p: Any, hashes: dict[str, str], hires: bool) -> None:
        """`Lora hashes` as A1111 writes it; the hires pass extends the first pass's entries."""
        if not webui.opt("loraprompt_hashes_in_infotext", True):
            return
        if not hires or not isinstance(getattr(p, "lora_hashes", None), dict):
            p.lora_hashes = {}
        p.lora_hashes.update(hashes)
        if p.lora_hashes:
            p.extra_generation_params["Lora hashes"] = format_lora_hashes(p.lora_hashes)
        else:
            p.extra_generation_params.pop("Lora hashes", None)
