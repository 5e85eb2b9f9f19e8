"""Prompt conditioning for the flow-matching transformers (SD3/SD3.5, Flux.1): each prompt text
of the schedule (A1111's prompt editing `[a:b:0.5]` and alternation `[a|b]`) is encoded once by
the pipeline's own `encode_prompt` (CLIP and T5) and switched between steps by the step-end
callback, so a plain prompt gives exactly diffusers' own embeddings.

Not as on SD: emphasis weights (`(word:1.2)`) are not applied (the text is encoded without its
brackets and a notice says so), `AND` is refused, and the step-end callbacks of Flux (and of
SD3's img2img) cannot switch the pooled CLIP vector, so an edited prompt keeps the first step's
there. img2img runs through diffusers' Flux/SD3 img2img pipelines (not the latent resize mode), and
so does the hires fix's second pass, after an image upscaler (Lanczos, Nearest: the latent ones
are refused).

Guidance follows the pipelines: SD3's CFG scale is `guidance_scale`; Flux's CFG scale is the
pipeline's `true_cfg_scale` (off at 1, the default: Flux is distilled) and its distilled guidance
(Forge's "Distilled CFG Scale") is `guidance_scale`, for models with a guidance embedder (dev)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from loraprompt.diagnostics import Diagnostic
from loraprompt.syntax import attention
from loraprompt.ui.hires import IMAGE_UPSCALERS, LATENT_UPSCALERS
from loraprompt.ui.img2img import LATENT_RESIZE

if TYPE_CHECKING:
    from loraprompt.ui.txt2img import Txt2ImgRequest

DIT_FAMILIES = ("sd3", "flux")
LABELS = {"sd3": "SD3", "flux": "Flux"}


def plain_text(text: str) -> tuple[str, bool]:
    """`text` without emphasis brackets (`BREAK` becomes a space), and whether a weight was dropped."""
    runs = attention(text)
    weighted = any(w != 1.0 and (run, w) != ("BREAK", -1.0) for run, w in runs)
    return "".join(" " if (run, w) == ("BREAK", -1.0) else run for run, w in runs), weighted


def has_distilled_guidance(pipe: Any) -> bool:
    """Whether a Flux transformer takes a guidance value (dev yes, schnell no)."""
    config = getattr(getattr(pipe, "transformer", None), "config", None)
    return bool(config is not None and config.get("guidance_embeds", False))


def check_dit_request(request: Txt2ImgRequest, family: str) -> None:
    """ValueError naming the field of `request` that the SD3/Flux path does not run."""
    name = LABELS.get(family, family)
    if request.init_image is not None and request.resize_mode == LATENT_RESIZE:
        raise ValueError(f"the latent resize mode is for SD models; on {name} choose another resize mode")
    if request.hires is not None and request.hires.upscaler in LATENT_UPSCALERS:
        raise ValueError(f"the latent hires upscalers are for SD models; on {name} choose "
                         f"{' or '.join(IMAGE_UPSCALERS)}")
    if int(request.clip_skip) > 1:
        raise ValueError(f"clip skip is for SD1/SD2/SDXL; {name} models read their text encoders as trained: set it to 1")
    if request.shift is not None and not float(request.shift) > 0:
        raise ValueError(f"shift must be above 0, not {request.shift:g}")


def dit_infotext(pipe: Any, family: str, request: Txt2ImgRequest, fixed_shift: float | None) -> dict[str, Any]:
    """The GenerationInfo fields Forge writes for these models: `Distilled CFG Scale` for a Flux
    model with a guidance embedder, `Shift` for a fixed-shift model (SD3)."""
    if family not in DIT_FAMILIES:
        return {}
    out: dict[str, Any] = {}
    if family == "flux" and has_distilled_guidance(pipe):
        out["distilled_cfg_scale"] = float(request.distilled_cfg_scale)
    if fixed_shift is not None:
        out["shift"] = float(request.shift) if request.shift is not None else fixed_shift
    return out


class DitConditioning:
    """A prompt pair's SD3/Flux conditioning over the steps, with the Conditioning interface that
    `Txt2Img` drives: `call_kwargs(batch)` start the pipeline, `step_update` switches."""

    composable = False

    def __init__(self, pipe: Any, family: str, prompt: str, negative: str, steps: int, *,
                 distilled_cfg: float = 3.5, hires_steps: int | None = None) -> None:
        import torch

        from loraprompt.syntax import schedules, split_and

        if family not in DIT_FAMILIES:
            raise ValueError(f"no transformer conditioning for {family!r}")
        parts = split_and(prompt)
        if len(parts) > 1 or parts[0][1] != 1.0:
            raise ValueError(f"AND (composable diffusion) is not supported on {LABELS[family]} models: remove AND")
        self.family, self.distilled_cfg = family, float(distilled_cfg)
        self.flux = family == "flux"
        self.positive, self.negative = schedules(prompt, steps, hires_steps), schedules(negative, steps, hires_steps)
        self.emphasis_dropped = False
        texts = {t for _, t in self.positive} | {t for _, t in self.negative}
        self.embeds: dict[str, tuple[Any, Any]] = {}
        with torch.no_grad():
            for text in texts:
                plain, weighted = plain_text(text)
                self.emphasis_dropped |= weighted
                self.embeds[text] = self._encode(pipe, plain)
        self.tensor_names = ["prompt_embeds"] if self.flux else ["prompt_embeds", "pooled_prompt_embeds"]

    def _encode(self, pipe: Any, text: str) -> tuple[Any, Any]:
        """(sequence embeddings, pooled vector) of one text, as the pipeline encodes it."""
        if self.flux:
            hidden, pooled, _ = pipe.encode_prompt(text, text, device=pipe._execution_device, num_images_per_prompt=1)
            return hidden, pooled
        hidden, _, pooled, _ = pipe.encode_prompt(text, text, text, device=pipe._execution_device,
                                                  num_images_per_prompt=1, do_classifier_free_guidance=False)
        return hidden, pooled

    @staticmethod
    def _text(schedule: list[tuple[int, str]], step: int) -> str:
        return next((text for end, text in schedule if step <= end), schedule[-1][1])

    def texts(self, step: int) -> tuple[str, str]:
        """(positive, negative) prompt text in force at 1-based `step`."""
        return self._text(self.positive, step), self._text(self.negative, step)

    def notes(self) -> list[Diagnostic]:
        """What the user should know about how the prompt was read."""
        if not self.emphasis_dropped:
            return []
        return [Diagnostic("I-EMPHASIS-IGNORED", f"emphasis weights are not applied on {LABELS[self.family]} models;"
                                                 " the text was encoded without them", severity="info")]

    def call_kwargs(self, batch: int, cfg: float) -> dict[str, Any]:
        """Pipeline keyword arguments for `batch` images with step 1's conditioning and the guidance.
        The embeddings are repeated here (the pipelines do not repeat embeddings they are given)."""
        pos, neg = self.texts(1)
        (hidden, pooled), (neg_hidden, neg_pooled) = self.embeds[pos], self.embeds[neg]
        out: dict[str, Any] = {"prompt_embeds": hidden.repeat(batch, 1, 1), "pooled_prompt_embeds": pooled.repeat(batch, 1),
                               "num_images_per_prompt": 1}
        if self.flux:
            out["true_cfg_scale"] = cfg
            out["guidance_scale"] = self.distilled_cfg
            if cfg <= 1.0:
                return out  # no negative pass: Flux runs without CFG
        else:
            out["guidance_scale"] = cfg
        out["negative_prompt_embeds"] = neg_hidden.repeat(batch, 1, 1)
        out["negative_pooled_prompt_embeds"] = neg_pooled.repeat(batch, 1)
        return out

    def step_update(self, done: int, guided: bool, batch: int = 1) -> dict[str, Any]:
        """Tensors for `callback_on_step_end` after 0-based step `done` when the next step's text
        differs: SD3's CFG batch is every negative, then every positive; Flux's holds the positive only."""
        import torch

        now, upcoming = self.texts(done + 1), self.texts(done + 2)
        if now == upcoming:
            return {}
        (pos_h, pos_p), (neg_h, neg_p) = self.embeds[upcoming[0]], self.embeds[upcoming[1]]
        pos_h, neg_h = pos_h.repeat(batch, 1, 1), neg_h.repeat(batch, 1, 1)
        if self.flux:
            return {"prompt_embeds": pos_h}
        pos_p, neg_p = pos_p.repeat(batch, 1), neg_p.repeat(batch, 1)
        if not guided:
            return {"prompt_embeds": pos_h, "pooled_prompt_embeds": pos_p}
        return {"prompt_embeds": torch.cat([neg_h, pos_h]), "pooled_prompt_embeds": torch.cat([neg_p, pos_p])}
