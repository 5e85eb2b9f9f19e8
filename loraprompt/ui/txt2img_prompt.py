"""Prompt conditioning as Automatic1111 computes it: emphasis (`(word:1.2)`, `[word]`), `BREAK`, and
prompts longer than 75 tokens in 75-token chunks, encoded by the pipeline's own text encoders and
passed to diffusers as embeddings. A plain prompt gives exactly diffusers' own embeddings."""

from __future__ import annotations

from typing import Any

from loraprompt.syntax import attention

CHUNK = 75  # tokens per chunk, between the start and end tokens

Chunk = list[tuple[int, float]]


def weighted_chunks(tokenizer: Any, text: str) -> list[Chunk]:
    """(token id, weight) chunks of `text`: each emphasis run tokenized on its own, as A1111 does."""
    chunks: list[Chunk] = []
    current: Chunk = []
    for run, weight in attention(text):
        if run == "BREAK" and weight == -1.0:
            chunks.append(current)
            current = []
            continue
        for token in tokenizer(run, add_special_tokens=False, truncation=False, verbose=False).input_ids:
            if len(current) == CHUNK:
                chunks.append(current)
                current = []
            current.append((token, weight))
    if current or not chunks:
        chunks.append(current)
    return chunks


def _encode(tokenizer: Any, encoder: Any, chunk: Chunk, penultimate: bool) -> tuple[Any, Any]:
    """One chunk through `encoder`: weighted hidden states (mean kept, as A1111 does) and pooled output."""
    import torch

    pad = CHUNK - len(chunk)
    ids = [tokenizer.bos_token_id, *(t for t, _ in chunk), tokenizer.eos_token_id, *[tokenizer.pad_token_id] * pad]
    weights = [1.0, *(w for _, w in chunk), 1.0, *[1.0] * pad]
    out = encoder(torch.tensor([ids], device=encoder.device), output_hidden_states=True)
    hidden = out.hidden_states[-2] if penultimate else out.last_hidden_state
    original_mean = hidden.mean()
    hidden = hidden * torch.tensor(weights, device=hidden.device, dtype=hidden.dtype).reshape(1, -1, 1)
    hidden = hidden * (original_mean / hidden.mean())
    return hidden, getattr(out, "text_embeds", None)


def _conditioning(pipe: Any, chunks: dict[str, list[Chunk]], count: int) -> tuple[Any, Any]:
    """Hidden states of `count` chunks (empty ones pad a shorter prompt) and the first chunk's pooled output."""
    import torch

    sdxl = getattr(pipe, "text_encoder_2", None) is not None
    towers = [("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2")] if sdxl else [("tokenizer", "text_encoder")]
    parts, pooled = [], None
    for i in range(count):
        per_tower = []
        for tok_name, enc_name in towers:
            chunk_list = chunks[tok_name]
            hidden, pool = _encode(getattr(pipe, tok_name), getattr(pipe, enc_name),
                                   chunk_list[i] if i < len(chunk_list) else [], penultimate=sdxl)
            per_tower.append(hidden)
            if i == 0 and enc_name == towers[-1][1]:
                pooled = pool
        parts.append(torch.cat(per_tower, dim=-1))
    return torch.cat(parts, dim=1), pooled


def prompt_embeddings(pipe: Any, prompt: str, negative: str) -> dict[str, Any]:
    """Keyword arguments for an SD/SDXL pipeline call carrying A1111-style conditioning."""
    import torch

    names = ["tokenizer", "tokenizer_2"] if getattr(pipe, "text_encoder_2", None) is not None else ["tokenizer"]
    pos = {n: weighted_chunks(getattr(pipe, n), prompt) for n in names}
    neg = {n: weighted_chunks(getattr(pipe, n), negative) for n in names}
    count = max(len(c) for c in [*pos.values(), *neg.values()])
    with torch.no_grad():
        embeds, pooled = _conditioning(pipe, pos, count)
        negative_embeds, negative_pooled = _conditioning(pipe, neg, count)
    kwargs = {"prompt_embeds": embeds, "negative_prompt_embeds": negative_embeds}
    if len(names) == 2:
        if not negative and getattr(pipe.config, "force_zeros_for_empty_prompt", False):
            negative_embeds, negative_pooled = torch.zeros_like(negative_embeds), torch.zeros_like(negative_pooled)
            kwargs["negative_prompt_embeds"] = negative_embeds
        kwargs["pooled_prompt_embeds"] = pooled
        kwargs["negative_pooled_prompt_embeds"] = negative_pooled
    return kwargs
