"""Bundled textual-inversion embeddings (A1111 v1.10's `bundle_emb.*` in a LoRA file) on a diffusers
pipeline, for as long as the LoRA is active.

As in A1111, an embedding works only while its LoRA is in the prompt, is skipped when its width
does not fit the model, and loses to a word the tokenizer already has. The pipeline's tokenizers
are swapped for copies that know the new words, and each text encoder's input-embedding module for
a longer one; `restore()` puts the original objects back, so nothing of the model changes.
Embeddings of several vectors follow diffusers' convention: `name` becomes `name name_1 ...`.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from loraprompt.adapters.types import Adapter
from loraprompt.diagnostics import Diagnostic

# (text encoder, tokenizer, the bundle parts it takes, first found wins)
TOWERS = (("text_encoder", "tokenizer", ("string_to_param", "clip_l")),
          ("text_encoder_2", "tokenizer_2", ("clip_g",)))


@dataclass
class AppliedEmbeddings:
    """What `apply_embeddings` changed; `restore()` undoes it. `expand(prompt)` spells multi-vector names."""

    pipe: Any
    originals: list[tuple[str, Any]] = field(default_factory=list)  # (attribute or encoder name, object)
    names: dict[str, int] = field(default_factory=dict)  # embedding name -> vectors
    diagnostics: list[Diagnostic] = field(default_factory=list)

    def expand(self, prompt: str) -> str:
        for name, count in self.names.items():
            if count > 1:
                spelled = " ".join([name] + [f"{name}_{i}" for i in range(1, count)])
                prompt = re.sub(rf"(?<![\w<]){re.escape(name)}(?![\w>])" if name[:1].isalnum() else re.escape(name),
                                spelled, prompt)
        return prompt

    def restore(self) -> None:
        for where, original in reversed(self.originals):
            if where.startswith("embeddings:"):
                getattr(self.pipe, where.split(":", 1)[1]).set_input_embeddings(original)
            else:
                setattr(self.pipe, where, original)
        self.originals.clear()


def _wanted(adapters: Iterable[Adapter]) -> dict[str, tuple[Adapter, dict[str, torch.Tensor]]]:
    out: dict[str, tuple[Adapter, dict[str, torch.Tensor]]] = {}
    for adapter in adapters:
        for name, parts in getattr(adapter, "embeddings", {}).items():
            out.setdefault(name, (adapter, parts))  # the first LoRA bundling a name wins
    return out


def apply_embeddings(pipe: Any, adapters: Iterable[Adapter]) -> AppliedEmbeddings:
    """Make the embeddings bundled in `adapters` usable as words of `pipe`'s prompts."""
    applied = AppliedEmbeddings(pipe)
    wanted = _wanted(adapters)
    if not wanted:
        return applied
    plan: dict[str, list[tuple[str, torch.Tensor]]] = {}  # tower -> [(name, vectors)]
    for name, (adapter, parts) in wanted.items():
        fitted: list[tuple[str, torch.Tensor]] = []
        problem = None
        for enc_name, tok_name, keys in TOWERS:
            encoder, tokenizer = getattr(pipe, enc_name, None), getattr(pipe, tok_name, None)
            if encoder is None or tokenizer is None:
                continue
            vectors = next((parts[k] for k in keys if k in parts), None)
            width = encoder.get_input_embeddings().embedding_dim
            if vectors is None or vectors.shape[-1] != width:
                got = "none" if vectors is None else f"width {vectors.shape[-1]}"
                problem = f"bundled embedding {name!r} does not fit this model's {enc_name} (width {width}, file has {got})"
                break
            if name in tokenizer.get_added_vocab():
                problem = f"bundled embedding {name!r} is already an added word of the {tok_name} (another embedding); that one wins"
                break
            fitted.append((enc_name, vectors))
        if problem or not fitted:
            applied.diagnostics.append(Diagnostic("W-EMBEDDING-SKIPPED", problem or f"bundled embedding {name!r}: no text encoder",
                                                  severity="warning", subject=adapter.name))
            continue
        counts = {v.shape[0] for _, v in fitted}
        applied.names[name] = max(counts)
        for enc_name, vectors in fitted:
            plan.setdefault(enc_name, []).append((name, vectors))
    for enc_name, tok_name, _ in TOWERS:
        if enc_name in plan:
            _install(applied, enc_name, tok_name, plan[enc_name])
    return applied


def _install(applied: AppliedEmbeddings, enc_name: str, tok_name: str, items: list[tuple[str, torch.Tensor]]) -> None:
    pipe = applied.pipe
    tokenizer, encoder = getattr(pipe, tok_name), getattr(pipe, enc_name)
    table = encoder.get_input_embeddings()
    words: list[tuple[str, torch.Tensor]] = []
    for name, vectors in items:
        words += [(name if i == 0 else f"{name}_{i}", vectors[i]) for i in range(vectors.shape[0])]
    new_tok = copy.deepcopy(tokenizer)
    new_tok.add_tokens([w for w, _ in words])
    ids = [new_tok.convert_tokens_to_ids(w) for w, _ in words]
    for (word, _), i in zip(words, ids):
        if new_tok(word, add_special_tokens=False).input_ids != [i]:
            applied.diagnostics.append(Diagnostic("W-EMBEDDING-SKIPPED", f"bundled embedding {word!r}: the {tok_name}"
                                                  " cannot make it one token", severity="warning", subject=word))
            return
    rows = max(table.num_embeddings, max(ids) + 1)
    weight = table.weight
    grown = torch.nn.Embedding(rows, table.embedding_dim, padding_idx=table.padding_idx,
                               device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        grown.weight[: table.num_embeddings] = weight
        for i, (_, vector) in zip(ids, words):
            grown.weight[i] = vector.to(weight.device, weight.dtype)
    grown.requires_grad_(weight.requires_grad)
    applied.originals.append((tok_name, tokenizer))
    setattr(pipe, tok_name, new_tok)
    applied.originals.append((f"embeddings:{enc_name}", table))
    encoder.set_input_embeddings(grown)
