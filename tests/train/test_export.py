"""The metadata a trained LoRA carries, as kohya's sd-scripts writes it."""

from __future__ import annotations

from loraprompt.train import TrainConfig
from loraprompt.train.data import Dataset
from loraprompt.train.export import metadata


def _meta(family: str, prediction: str) -> dict[str, str]:
    return metadata(TrainConfig(images="x", output="me.safetensors"), family=family, base_name="base",
                    base_hash=None, dataset=Dataset([]), started=0.0, finished=1.0, steps=1, resolution=768,
                    prediction_type=prediction, folder_name="x")


def test_sd2_v_prediction_is_the_768_v_architecture() -> None:
    assert _meta("sd2", "v_prediction")["modelspec.architecture"] == "stable-diffusion-v2-768-v/lora"
    assert _meta("sd2", "epsilon")["modelspec.architecture"] == "stable-diffusion-v2-512/lora"
    assert _meta("sd1", "epsilon")["modelspec.architecture"] == "stable-diffusion-v1/lora"


def test_the_shared_file_does_not_carry_the_users_paths() -> None:
    config = TrainConfig(images="/home/alice/private/photos", output="/home/alice/out/me.safetensors",
                         checkpoint="/home/alice/models/base.safetensors")
    meta = metadata(config, family="sd1", base_name="base", base_hash=None, dataset=Dataset([]), started=0.0,
                    finished=1.0, steps=1, resolution=512, prediction_type="epsilon", folder_name="photos")
    assert not [k for k, v in meta.items() if "/home/alice" in v]  # sd-scripts writes base names only
    assert '"checkpoint": "base.safetensors"' in meta["loraprompt_recipe"]
