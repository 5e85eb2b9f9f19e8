"""LoRAs that bundle a textual-inversion embedding (`bundle_emb.<token>.string_to_param.*`, what
`loraprompt train --pivotal` and OneTrainer write, and A1111 applies) go through the tools: convert,
resize and LoRA merges keep the embedding as it is; a checkpoint merge says it is left out. They
were refused as "not a plain kohya LoRA key: LyCORIS files ..." (a checkpoint merge dropped the
embedding without a word). And a rank-0 module is refused by name, not a ZeroDivisionError."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from loraprompt.errors import AdapterFileError, ToolError
from loraprompt.tools.convert import convert_lora
from loraprompt.tools.lora import read_lora
from loraprompt.tools.lora_merge import merge_loras
from loraprompt.tools.merge import LoraSpec, merge_checkpoint
from loraprompt.tools.resize import resize_lora
from loraprompt.tools.svd import RankTarget

KEY = "bundle_emb.sks.string_to_param.*"


def _with_embedding(source: Path, out: Path, seed: int = 0) -> torch.Tensor:
    tensors = load_file(str(source))
    from safetensors import safe_open

    with safe_open(str(source), "pt") as f:
        metadata = f.metadata() or {}
    width = next(t.shape[1] for k, t in tensors.items() if k.startswith("lora_te") and k.endswith("lora_down.weight"))
    vectors = torch.randn(2, width, generator=torch.Generator().manual_seed(seed))
    save_file({**tensors, KEY: vectors}, str(out), metadata=metadata)
    return vectors


def test_convert_resize_and_merge_keep_a_bundled_embedding(tmp_path: Path, kohya_file: Path) -> None:
    bundled = tmp_path / "pivotal.safetensors"
    vectors = _with_embedding(kohya_file, bundled)
    assert torch.equal(read_lora(bundled).embeddings[KEY], vectors)
    convert_lora(bundled, tmp_path / "comfy.safetensors", "comfyui")
    resize_lora(bundled, tmp_path / "small.safetensors", RankTarget(rank=2))
    merge_loras([bundled, kohya_file], [0.5, 0.5], tmp_path / "merged.safetensors")
    for name in ("comfy", "small", "merged"):
        assert torch.equal(load_file(str(tmp_path / f"{name}.safetensors"))[KEY], vectors), name
    with pytest.raises(ToolError, match=r"bundle_emb\.sks\.string_to_param\.\*: a bundled embedding has no place in a PEFT file"):
        convert_lora(bundled, tmp_path / "peft.safetensors", "peft")
    assert not (tmp_path / "peft.safetensors").exists()
    other = tmp_path / "other.safetensors"
    _with_embedding(kohya_file, other, seed=1)  # the same token, other vectors
    with pytest.raises(ToolError, match="bundle different embeddings for one token"):
        merge_loras([bundled, other], [1.0, 1.0], tmp_path / "clash.safetensors")


def test_a_checkpoint_merge_says_the_bundled_embedding_is_left_out(tmp_path: Path, sd1_inputs: dict[str, Path]) -> None:
    bundled = tmp_path / "pivotal.safetensors"
    _with_embedding(sd1_inputs["lora"], bundled)
    report = merge_checkpoint(sd1_inputs["checkpoint"], [LoraSpec(bundled)], tmp_path / "merged.safetensors")
    (note,) = [d for d in report.diagnostics if d.code == "W-EMBEDDING-NOT-MERGED"]
    assert "sks" in note.message and note.subject == str(bundled)


def test_a_rank_0_module_is_refused_by_name(tmp_path: Path, kohya_file: Path) -> None:
    tensors = load_file(str(kohya_file))
    down = next(k for k in tensors if k.endswith(".lora_down.weight"))
    up = down.replace("lora_down", "lora_up")
    tensors[down] = tensors[down][:0].contiguous()
    tensors[up] = tensors[up][:, :0].contiguous()
    broken = tmp_path / "rank0.safetensors"
    save_file(tensors, str(broken))
    with pytest.raises(AdapterFileError, match="rank 0") as caught:
        resize_lora(broken, tmp_path / "out.safetensors", RankTarget(rank=2))
    assert down.rsplit(".lora_down", 1)[0].removeprefix("lora_unet_").removeprefix("lora_te_") in str(caught.value)
