"""The model side of training: load the base pipeline, put peft LoRA layers on it, learn a pivotal
token's embedding, encode captions the way each family's pipeline does, and read the learned
factors back as `LoraFactors` (what loraprompt's writers take)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from loraprompt.train.config import TE_TARGETS, UNET_FF_TARGETS, UNET_TARGETS, TrainConfig
from loraprompt.train.errors import TrainError

ADAPTER = "default"
NATIVE_RESOLUTION = {"sd1": 512, "sd2": 512, "sdxl": 1024}


@dataclass
class Base:
    """The base model being trained and what the output's metadata says about it."""

    pipe: Any
    family: str  # sd1, sd2, sdxl
    name: str
    model_hash: str | None = None
    is_demo: bool = False

    @property
    def text_encoders(self) -> list[tuple[str, Any, Any]]:
        """(component, tokenizer, encoder) for each text encoder."""
        out = [("text_encoder", self.pipe.tokenizer, self.pipe.text_encoder)]
        if getattr(self.pipe, "text_encoder_2", None) is not None:
            out.append(("text_encoder_2", self.pipe.tokenizer_2, self.pipe.text_encoder_2))
        return out

    @property
    def prediction_type(self) -> str:
        return str(self.pipe.scheduler.config.get("prediction_type", "epsilon"))

    def native_resolution(self) -> int:
        if self.is_demo:
            from loraprompt.models.demo import DEMO_SIZE

            return DEMO_SIZE
        if self.family == "sd2" and self.prediction_type == "v_prediction":
            return 768
        return NATIVE_RESOLUTION.get(self.family, 512)


def family_of(pipe: Any) -> str:
    if getattr(pipe, "text_encoder_2", None) is not None:
        return "sdxl"
    return "sd2" if int(pipe.unet.config.cross_attention_dim) >= 1024 else "sd1"


def resolve_device(name: str) -> torch.device:
    """`auto` (cuda when present), cpu, cuda or cuda:N; TrainError for a name torch does not know."""
    try:
        device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)
    except RuntimeError as exc:
        raise TrainError(f"--device {name!r}: expected cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainError(f"--device {name}: no CUDA device is available")
    return device


def load_base(checkpoint: str, prediction_type: str | None = None) -> Base:
    """`demo` (the built-in tiny model) or a local checkpoint, loaded offline in float32 on the CPU."""
    if checkpoint == "demo":
        from loraprompt.models.demo import build_demo_pipeline

        return Base(build_demo_pipeline(), "sd1", "loraprompt-demo", None, is_demo=True)
    from loraprompt.models.checkpoint import CheckpointError, load_checkpoint

    try:
        loaded = load_checkpoint(checkpoint, prediction_type)
    except CheckpointError as exc:
        raise TrainError(str(exc)) from exc
    if loaded.family not in NATIVE_RESOLUTION:  # the web UI loads SD3/Flux folders; training is SD's
        raise TrainError(f"{checkpoint}: a {loaded.family} model; training runs on SD1.x, SD2.x and SDXL checkpoints")
    pipe = loaded.pipe.to("cpu", torch.float32)
    return Base(pipe, loaded.family, loaded.name, loaded.model_hash)


class PivotalToken:
    """A new token in every tokenizer whose input embedding is one learned vector per text encoder.

    The embedding tables stay as they are: a forward hook on each token-embedding module puts the
    learned vector where the new id appears, so only the vectors are trained (and stored)."""

    def __init__(self, base: Base, token: str, init_word: str) -> None:
        self.token = token
        self.vectors: dict[str, nn.Parameter] = {}
        self.ids: dict[str, int] = {}
        self.hooks: list[Any] = []
        for component, tokenizer, encoder in base.text_encoders:
            if token in tokenizer.get_vocab():
                raise TrainError(f"--token {token!r} is already a word of the {component} tokenizer;"
                                 " pick a new token such as <s1>")
            tokenizer.add_tokens([token])
            new_id = tokenizer.convert_tokens_to_ids(token)
            table = encoder.get_input_embeddings()
            init_ids = tokenizer(init_word, add_special_tokens=False).input_ids
            if not init_ids:
                raise TrainError(f"--init-word {init_word!r} has no tokens")
            with torch.no_grad():
                start = table.weight[torch.tensor(init_ids)].float().mean(0, keepdim=True)
            self.vectors[component] = nn.Parameter(start.clone())
            self.ids[component] = new_id
            before, after = self._hook(component, new_id, table.num_embeddings)
            self.hooks += [table.register_forward_pre_hook(before), table.register_forward_hook(after)]

    def _hook(self, component: str, new_id: int, rows: int) -> Any:
        # The new id may lie past the table (real CLIP tables end with the vocabulary): a pre-hook
        # notes where it appears and clamps it to a real row, the forward hook puts the vector there.
        hits: list[Tensor] = []

        def before(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            ids = args[0]
            hits.append((ids == new_id).unsqueeze(-1))
            return (ids.clamp(max=rows - 1), *args[1:])

        def after(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
            return torch.where(hits.pop(), self.vectors[component][0].to(output.dtype), output)

        return before, after

    def remove(self) -> None:
        for hook in self.hooks:
            hook.remove()


def te_module_names(encoder: Any) -> list[str]:
    return [n for n, m in encoder.named_modules() if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in TE_TARGETS]


def add_lora(base: Base, config: TrainConfig) -> dict[str, nn.Module]:
    """peft LoRA layers on the UNet's attention (and feed-forward with `ff`) and, with `train_te`,
    on each text encoder's attention; returns the trained components by name."""
    from peft import LoraConfig

    unet = base.pipe.unet
    targets = list(UNET_TARGETS) + (list(UNET_FF_TARGETS) if config.ff else [])
    unet.requires_grad_(False)
    alpha: Any = config.network_alpha  # peft annotates int; scaling = alpha / r takes any number
    unet.add_adapter(LoraConfig(r=config.rank, lora_alpha=alpha, init_lora_weights="gaussian",
                                target_modules=targets), adapter_name=ADAPTER)
    trained: dict[str, nn.Module] = {"unet": unet}
    for component, _, encoder in base.text_encoders:
        encoder.requires_grad_(False)
        if config.train_te:
            encoder.add_adapter(LoraConfig(r=config.rank, lora_alpha=alpha,
                                           init_lora_weights="gaussian", target_modules=te_module_names(encoder)),
                                adapter_name=ADAPTER)
            trained[component] = encoder
    base.pipe.vae.requires_grad_(False)
    return trained


def lora_parameters(module: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in module.named_parameters() if p.requires_grad}


@dataclass
class Encoded:
    """A batch's conditioning: the cross-attention states and, for SDXL, the pooled text embeds."""

    states: Tensor
    pooled: Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _ids(tokenizer: Any, captions: list[str], device: torch.device) -> Tensor:
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids.to(device)


def encode(base: Base, captions: list[str], device: torch.device) -> Encoded:
    """What the family's pipeline feeds the UNet: SD1/SD2 the last hidden state; SDXL both
    encoders' penultimate hidden states concatenated and the second encoder's pooled output."""
    encoders = base.text_encoders
    if base.family != "sdxl":
        _, tokenizer, encoder = encoders[0]
        return Encoded(encoder(_ids(tokenizer, captions, device))[0])
    states = []
    pooled = None
    for component, tokenizer, encoder in encoders:
        out = encoder(_ids(tokenizer, captions, device), output_hidden_states=True)
        states.append(out.hidden_states[-2])
        if component == "text_encoder_2":
            pooled = out[0]
    return Encoded(torch.cat(states, dim=-1), pooled)


def trained_factors(trained: dict[str, nn.Module], alpha: float) -> list[Any]:
    """The learned LoRA modules as loraprompt `LoraFactors` (kohya path, A = down, B = up)."""
    from peft.utils import get_peft_model_state_dict

    from loraprompt.tools.lora import LoraFactors

    out = []
    for component, module in trained.items():
        state = get_peft_model_state_dict(module, adapter_name=ADAPTER)
        for key in sorted(k for k in state if k.endswith(".lora_A.weight")):
            dotted = key[: -len(".lora_A.weight")]
            up = state[f"{dotted}.lora_B.weight"]
            if component != "unet" and not dotted.startswith("text_model."):
                dotted = "text_model." + dotted  # transformers 5 flattened CLIPTextModel; files keep text_model.
            out.append(LoraFactors(component, dotted.replace(".", "_"), state[key].detach().float().cpu().contiguous(),
                                   up.detach().float().cpu().contiguous(), alpha=alpha, dotted=dotted))
    return out
