"""The metadata a trained LoRA carries, as kohya's sd-scripts writes it."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from loraprompt.train import TrainConfig
from loraprompt.train.data import Dataset
from loraprompt.train.export import metadata


def _meta(family: str, prediction: str) -> dict[str, str]:
    return metadata(TrainConfig(images="x", output="me.safetensors"), family=family, base_name="base",
                    dataset=Dataset([]), started=0.0, finished=1.0, steps=1, resolution=768,
                    prediction_type=prediction, folder_name="x")


def test_sd2_v_prediction_is_the_768_v_architecture() -> None:
    assert _meta("sd2", "v_prediction")["modelspec.architecture"] == "stable-diffusion-v2-768-v/lora"
    assert _meta("sd2", "epsilon")["modelspec.architecture"] == "stable-diffusion-v2-512/lora"
    assert _meta("sd1", "epsilon")["modelspec.architecture"] == "stable-diffusion-v1/lora"


def test_the_shared_file_does_not_carry_the_users_paths() -> None:
    config = TrainConfig(images="/home/alice/private/photos", output="/home/alice/out/me.safetensors",
                         checkpoint="/home/alice/models/base.safetensors")
    meta = metadata(config, family="sd1", base_name="base", dataset=Dataset([]), started=0.0, finished=1.0,
                    steps=1, resolution=512, prediction_type="epsilon", folder_name="photos")
    assert not [k for k, v in meta.items() if "/home/alice" in v]  # sd-scripts writes base names only
    assert '"checkpoint": "base.safetensors"' in meta["loraprompt_recipe"]


def test_the_base_model_hashes_are_the_ones_sd_scripts_writes(tmp_path: Path) -> None:
    """ss_new_sd_model_hash held the 10-digit AutoV2 short hash; sd-scripts writes the whole file's
    sha256 there (what Civitai and model managers match a base by) and A1111's old 8-digit model hash
    (sha256 of the 64 KiB at 1 MiB) in ss_sd_model_hash, which was missing."""
    import hashlib

    import torch
    from safetensors.torch import save_file

    base = tmp_path / "base.safetensors"
    save_file({"w": torch.arange(400_000, dtype=torch.float32)}, str(base))  # 1.6 MB: past the legacy hash's 1 MiB
    data = base.read_bytes()

    def meta(checkpoint: str) -> dict[str, str]:
        return metadata(TrainConfig(images="x", output="me.safetensors", checkpoint=checkpoint), family="sd1",
                        base_name="base", dataset=Dataset([]), started=0.0, finished=1.0, steps=1, resolution=512,
                        prediction_type="epsilon", folder_name="x")

    written = meta(str(base))
    assert written["ss_new_sd_model_hash"] == hashlib.sha256(data).hexdigest()
    assert written["ss_sd_model_hash"] == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    for unhashed in ("demo", str(tmp_path), str(tmp_path / "gone.safetensors")):  # no single file (any more)
        assert (meta(unhashed)["ss_sd_model_hash"], meta(unhashed)["ss_new_sd_model_hash"]) == ("", "")


def test_the_base_model_name_is_the_file_name_as_sd_scripts_writes_it(tmp_path: Path) -> None:
    """sd-scripts writes ss_sd_model_name as the base's os.path.basename when the path exists (the
    file name with its extension, a diffusers folder's name), else the name as given."""
    base = tmp_path / "v1-5-pruned.safetensors"
    base.write_bytes(b"\0" * 16)
    (tmp_path / "sdxl-folder").mkdir()

    def name(checkpoint: str) -> str:
        return metadata(TrainConfig(images="x", output="me.safetensors", checkpoint=checkpoint), family="sd1",
                        base_name="the loader's name", dataset=Dataset([]), started=0.0, finished=1.0, steps=1,
                        resolution=512, prediction_type="epsilon", folder_name="x")["ss_sd_model_name"]

    assert name(str(base)) == "v1-5-pruned.safetensors"
    assert name(str(tmp_path / "sdxl-folder")) == "sdxl-folder"
    assert name("demo") == "the loader's name"


class _Exploit:
    """A pickle payload that would create a file when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("version", ["2.5.1", "2.5.1+cu124"])
def test_a_training_state_is_not_unpickled_on_torch_older_than_2_6(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    version: str) -> None:
    """Robustness rule 11 for --resume: weights_only had bypasses before torch 2.6 (CVE-2025-32434), so a
    state.pt planted in a folder given to --resume must not be read there; on torch >= 2.6 it is refused
    by weights_only and runs nothing either."""
    import torch

    from loraprompt.train import TrainError, read_state

    marker = tmp_path / "pwned"
    torch.save({"version": 1, "payload": _Exploit(marker)}, tmp_path / "state.pt")
    with pytest.raises(TrainError, match=r"state\.pt: .*cannot read the training state"):
        read_state(tmp_path)
    monkeypatch.setattr(torch, "__version__", version)
    with pytest.raises(TrainError, match=rf"state\.pt: refusing pickled weights on torch {re.escape(version)}"):
        read_state(tmp_path)
    assert not marker.exists()


def test_an_sdxl_lora_with_only_clip_l_trained_keeps_kohyas_lora_te1(tmp_path: Path) -> None:
    """The trainer passes the model's family to the writer: an SDXL file whose text-encoder part is
    CLIP-L's alone is `lora_te1_` (A1111 maps no `lora_te_` on SDXL, so that part did nothing)."""
    import torch
    from safetensors.torch import load_file

    from loraprompt.tools.lora import LoraFactors
    from loraprompt.train.export import write_lora_file

    factors = [LoraFactors("text_encoder", "text_model_encoder_layers_0_self_attn_q_proj", torch.ones(2, 8), torch.ones(8, 2), 2.0),
               LoraFactors("unet", "down_blocks_1_attentions_0_proj_in", torch.ones(2, 8), torch.ones(8, 2), 2.0)]
    for family, prefix in (("sdxl", "lora_te1_"), ("sd1", "lora_te_")):
        out = tmp_path / f"{family}.safetensors"
        write_lora_file(out, factors, "kohya", {}, None, family=family)
        te = {k.split("text_model")[0] for k in load_file(out) if "text_model" in k}
        assert te == {prefix}, (family, te)
