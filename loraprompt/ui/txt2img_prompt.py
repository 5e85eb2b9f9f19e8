"""Prompt conditioning as Automatic1111 computes it: prompt editing (`[a:b:0.5]`, `[a|b]`), emphasis
(`(word:1.2)`, `[word]`), `BREAK`, and prompts longer than 75 tokens in 75-token chunks, encoded by
the pipeline's own text encoders and passed to diffusers as embeddings (switched between steps by
the step-end callback). A plain prompt gives exactly diffusers' own embeddings."""

from __future__ import annotations

from typing import Any

from loraprompt.diagnostics import Diagnostic
from loraprompt.models.clip_skip import MAX_CLIP_SKIP, clip_skip_top
from loraprompt.syntax import attention

CHUNK = 75  # tokens per chunk, between the start and end tokens
COMMA_BACKTRACK = 20  # A1111's "Prompt word wrap length limit" (comma_padding_backtrack), its default

Chunk = list[tuple[int, float]]


def negative_prompt_notes(negative: str) -> list[Diagnostic]:
    """A warning for each tag in the negative prompt: as in A1111 it reaches the text encoder as text
    and applies nothing (a LoRA applies to the whole model, negative pass included, from the prompt),
    which is rarely what was meant."""
    from loraprompt.syntax import parse

    if "<" not in negative:
        return []
    return [Diagnostic(d.code, f"negative prompt: {d.message}; as in A1111, put LoRA tags in the prompt",
                       severity="warning") for d in parse(negative, negative=True).diagnostics if d.code == "tag-in-negative"]


def weighted_chunks(tokenizer: Any, text: str, backtrack: int = COMMA_BACKTRACK) -> list[Chunk]:
    """(token id, weight) chunks of `text`: each emphasis run tokenized on its own, as A1111 does.

    A chunk that fills up within `backtrack` tokens after a comma ends at that comma, and the
    tokens after it open the next chunk (A1111's word wrap: a phrase is not cut in two between
    chunks); 0 turns it off."""
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    chunks: list[Chunk] = []
    current: Chunk = []
    last_comma = -1
    for run, weight in attention(text):
        if run == "BREAK" and weight == -1.0:
            chunks.append(current)
            current, last_comma = [], -1
            continue
        for token in tokenizer(run, add_special_tokens=False, truncation=False, verbose=False).input_ids:
            if token == comma:
                last_comma = len(current)
            elif backtrack and len(current) == CHUNK and last_comma != -1 and CHUNK - last_comma <= backtrack:
                chunks.append(current[: last_comma + 1])
                current, last_comma = current[last_comma + 1 :], -1
            if len(current) == CHUNK:
                chunks.append(current)
                current, last_comma = [], -1
            current.append((token, weight))
    if current or not chunks:
        chunks.append(current)
    return chunks


def _encode(tokenizer: Any, encoder: Any, chunk: Chunk, skip: int, norm: bool = True) -> tuple[Any, Any]:
    """One chunk through `encoder`: weighted hidden states (mean kept, as A1111 does) and pooled output.

    `skip` counts layers from the end: 1 is the last layer, 2 the penultimate (A1111's "Clip skip").
    With `norm` the final layer norm follows, as for SD1/SD2 (`last_hidden_state` for skip 1);
    without it the layer's raw output is taken, as SDXL's encoders are read."""
    import torch

    pad = CHUNK - len(chunk)
    ids = [tokenizer.bos_token_id, *(t for t, _ in chunk), tokenizer.eos_token_id, *[tokenizer.pad_token_id] * pad]
    weights = [1.0, *(w for _, w in chunk), 1.0, *[1.0] * pad]
    out = encoder(torch.tensor([ids], device=encoder.device), output_hidden_states=True)
    if not norm:
        hidden = out.hidden_states[-skip]
    elif skip == 1:
        hidden = out.last_hidden_state
    else:  # A1111's clip skip: an earlier layer, then the final norm
        hidden = getattr(encoder, "text_model", encoder).final_layer_norm(out.hidden_states[-skip])
    if any(w != 1.0 for w in weights):  # else the rescale is exactly 1 (or 0/0 for a zero mean)
        original_mean = hidden.mean()
        hidden = hidden * torch.tensor(weights, device=hidden.device, dtype=hidden.dtype).reshape(1, -1, 1)
        new_mean = hidden.mean()  # a zero mean would make every value NaN: keep the weighted states (no host sync)
        hidden = hidden * torch.where(new_mean != 0, original_mean / new_mean, torch.ones_like(new_mean))
    return hidden, getattr(out, "text_embeds", None)


def sdxl_layers(clip_skip: int) -> list[int]:
    """The hidden layer (counted from the end, before the final norm) each SDXL encoder is read at.

    SDXL reads both encoders at their penultimate layer. A1111 applies "Clip skip" to SDXL's
    CLIP-L only, and only with its `sdxl_clip_l_skip` setting: then CLIP-L is read at layer
    -clip_skip and OpenCLIP-G stays at -2. Clip skip 1 (no "Clip skip" in the infotext) keeps
    SDXL's own penultimate layer, which is what A1111 does by default; 2 is the same layer."""
    return [max(2, int(clip_skip)), 2]


def _conditioning(pipe: Any, chunks: dict[str, list[Chunk]], count: int, clip_skip: int) -> tuple[Any, Any]:
    """Hidden states of `count` chunks (empty ones pad a shorter prompt) and the first chunk's pooled output."""
    import torch

    sdxl = getattr(pipe, "text_encoder_2", None) is not None
    towers = [("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2")] if sdxl else [("tokenizer", "text_encoder")]
    layers = sdxl_layers(clip_skip) if sdxl else [clip_skip]
    for (_, enc_name), layer in zip(towers, layers):  # else an IndexError from deep in the encoder
        top = clip_skip_top(pipe, enc_name)  # the page's and the APIs' limit too
        if layer > top:
            why = f"the {top} layers of {enc_name} allow" if top < MAX_CLIP_SKIP else "A1111's setting goes"
            raise ValueError(f"clip skip {clip_skip} is deeper than {why}: set 1 to {top}")
    parts, pooled = [], None
    for i in range(count):
        per_tower = []
        for (tok_name, enc_name), layer in zip(towers, layers):
            chunk_list = chunks[tok_name]
            hidden, pool = _encode(getattr(pipe, tok_name), getattr(pipe, enc_name),
                                   chunk_list[i] if i < len(chunk_list) else [], layer, norm=not sdxl)
            per_tower.append(hidden)
            if i == 0 and enc_name == towers[-1][1]:
                pooled = pool
        parts.append(torch.cat(per_tower, dim=-1))
    return torch.cat(parts, dim=1), pooled


def _is_sdxl(pipe: Any) -> bool:
    return getattr(pipe, "text_encoder_2", None) is not None


class Conditioning:
    """A prompt pair's conditioning over the steps: `kwargs` start the pipeline, `step_update` switches.

    With `composable`, the prompt is split on `AND` first (A1111's composable diffusion): each
    part has its own schedule and weight (`parts`, `weights`), and `part_embeds(step)` gives all of
    them for `loraprompt.ui.composable`; `kwargs` and `step_update` then follow the first part.
    `hires_steps` schedules the prompts for a hires pass of that many steps (A1111's rules)."""

    def __init__(self, pipe: Any, prompt: str, negative: str, steps: int, clip_skip: int = 1, *,
                 composable: bool = False, hires_steps: int | None = None) -> None:
        import torch

        from loraprompt.syntax import schedules, split_and

        self.sdxl = _is_sdxl(pipe)
        parts = split_and(prompt) if composable else [(prompt, 1.0)]
        self.weights = [w for _, w in parts]
        self.part_schedules = [schedules(text, steps, hires_steps) for text, _ in parts]
        self.positive, self.negative = self.part_schedules[0], schedules(negative, steps, hires_steps)
        names = ["tokenizer", "tokenizer_2"] if self.sdxl else ["tokenizer"]
        texts = {t for schedule in self.part_schedules for _, t in schedule} | {t for _, t in self.negative}
        chunks = {t: {n: weighted_chunks(getattr(pipe, n), t) for n in names} for t in texts}
        count = max(len(c) for per in chunks.values() for c in per.values())
        with torch.no_grad():
            self.embeds = {t: _conditioning(pipe, chunks[t], count, clip_skip) for t in texts}
        if self.sdxl and not negative and getattr(pipe.config, "force_zeros_for_empty_prompt", False):
            hidden, pooled = self.embeds[negative]
            self.embeds[negative] = (torch.zeros_like(hidden), torch.zeros_like(pooled))
        self.tensor_names = ["prompt_embeds", "add_text_embeds"] if self.sdxl else ["prompt_embeds"]

    @property
    def composable(self) -> bool:
        """True when the sampler must combine several parts (more than one, or one weighted part)."""
        return len(self.weights) > 1 or self.weights[0] != 1.0

    def part_embeds(self, step: int) -> tuple[tuple[Any, Any], list[tuple[Any, Any]]]:
        """(negative, [each part]) (hidden states, pooled) in force at 1-based `step`."""
        negative = self.embeds[self._text(self.negative, step)]
        return negative, [self.embeds[self._text(s, step)] for s in self.part_schedules]

    @staticmethod
    def _text(schedule: list[tuple[int, str]], step: int) -> str:
        return next((text for end, text in schedule if step <= end), schedule[-1][1])

    def texts(self, step: int) -> tuple[str, str]:
        """(positive, negative) prompt text in force at 1-based `step`."""
        return self._text(self.positive, step), self._text(self.negative, step)

    @property
    def kwargs(self) -> dict[str, Any]:
        """Pipeline keyword arguments with the conditioning of step 1."""
        pos, neg = self.texts(1)
        out = {"prompt_embeds": self.embeds[pos][0], "negative_prompt_embeds": self.embeds[neg][0]}
        if self.sdxl:
            out["pooled_prompt_embeds"] = self.embeds[pos][1]
            out["negative_pooled_prompt_embeds"] = self.embeds[neg][1]
        return out

    def call_kwargs(self, batch: int, cfg: float) -> dict[str, Any]:
        """Pipeline keyword arguments for `batch` images per prompt with step 1's conditioning."""
        return {**self.kwargs, "guidance_scale": cfg, "num_images_per_prompt": batch}

    def step_update(self, done: int, guided: bool, batch: int = 1) -> dict[str, Any]:
        """Tensors for `callback_on_step_end` after 0-based step `done` when the next step's text differs
        (for `batch` images per prompt, laid out as diffusers does: every negative, then every positive)."""
        import torch

        now, upcoming = self.texts(done + 1), self.texts(done + 2)
        if now == upcoming:
            return {}
        (pos_h, pos_p), (neg_h, neg_p) = self.embeds[upcoming[0]], self.embeds[upcoming[1]]
        pos_h, neg_h = pos_h.repeat(batch, 1, 1), neg_h.repeat(batch, 1, 1)
        out = {"prompt_embeds": torch.cat([neg_h, pos_h]) if guided else pos_h}
        if self.sdxl:
            pos_p, neg_p = pos_p.repeat(batch, 1), neg_p.repeat(batch, 1)
            out["add_text_embeds"] = torch.cat([neg_p, pos_p]) if guided else pos_p
        return out
