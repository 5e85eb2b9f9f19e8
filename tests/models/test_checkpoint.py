"""Offline checkpoint loading: family detection from keys and shapes, the shipped configs (their
models have the published parameter counts), the shipped CLIP tokenizer, and a single-file LDM
checkpoint written from the demo model that loads back bit-exactly with no network."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from loraprompt.models.checkpoint import (
    CheckpointError,
    detect_family,
    family_config,
    header_shapes,
    load_checkpoint,
    load_single_file,
    write_config_dir,
)
from loraprompt.models.demo import build_demo_pipeline, demo_text_config, demo_unet_config, demo_vae_config
from tests.models.ldm_layout import (
    components_from_configs,
    tiny_sd2_configs,
    tiny_sdxl_configs,
    write_ldm_checkpoint,
)

os.environ["HF_HUB_OFFLINE"] = "1"

UNET_IN = "model.diffusion_model.input_blocks.0.0.weight"
SD1_TE = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
SD2_TE = "cond_stage_model.model.token_embedding.weight"
SDXL_TE1 = "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight"
SDXL_TE2 = "conditioner.embedders.1.model.token_embedding.weight"
REFINER_TE = "conditioner.embedders.0.model.token_embedding.weight"


@pytest.mark.parametrize(
    ("shapes", "family"),
    [
        ({UNET_IN: (320, 4, 3, 3), SD1_TE: (49408, 768)}, "sd1"),
        ({UNET_IN: (320, 4, 3, 3), SD2_TE: (49408, 1024)}, "sd2"),
        ({UNET_IN: (320, 4, 3, 3), SDXL_TE1: (49408, 768), SDXL_TE2: (49408, 1280)}, "sdxl"),
    ],
)
def test_detect_family(shapes: dict[str, tuple[int, ...]], family: str) -> None:
    assert detect_family(shapes) == family


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        ({"lora_unet_x.lora_down.weight": (4, 320)}, "not a Stable Diffusion checkpoint"),
        ({UNET_IN: (320, 9, 3, 3), SD1_TE: (49408, 768)}, "inpainting"),
        ({UNET_IN: (320, 8, 3, 3), SD1_TE: (49408, 768)}, "instruct-pix2pix"),
        ({UNET_IN: (384, 4, 3, 3), REFINER_TE: (49408, 1280)}, "refiner"),
        ({UNET_IN: (320, 4, 3, 3),
          "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768)}, "looks sd1"),
    ],
)
def test_detect_family_refuses_what_txt2img_cannot_run(shapes: dict[str, tuple[int, ...]], message: str) -> None:
    with pytest.raises(CheckpointError, match=message) as info:
        detect_family(shapes, "models/x.safetensors")
    assert "models/x.safetensors" in str(info.value)


# Published parameter counts of the real models (UNet, VAE, text encoder(s)).
PARAMS = {
    "sd1": (859_520_964, 83_653_863, 123_060_480),
    "sd2": (865_910_724, 83_653_863, 340_387_840),
    "sdxl": (2_567_463_684, 83_653_863, 123_060_480, 694_659_840),
}


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_shipped_configs_build_the_published_models(family: str) -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = family_config(family)

    def count(module: Any) -> int:
        return sum(p.numel() for p in module.parameters())

    def text(key: str, cls: Any) -> Any:
        return cls(CLIPTextConfig(**{k: v for k, v in cfg[key].items() if k != "architectures"}))

    with torch.device("meta"):
        found = [count(UNet2DConditionModel.from_config(cfg["unet"])), count(AutoencoderKL.from_config(cfg["vae"])),
                 count(text("text_encoder", CLIPTextModel))]
        if family == "sdxl":
            found.append(count(text("text_encoder_2", CLIPTextModelWithProjection)))
    assert tuple(found) == PARAMS[family]


def test_shipped_tokenizer_is_clip(tmp_path: Path) -> None:
    from transformers import CLIPTokenizer

    folder = write_config_dir(family_config("sdxl"), tmp_path)
    assert write_config_dir(family_config("sdxl"), tmp_path) == folder  # written once, by digest
    tokenizer = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"), local_files_only=True)
    # the ids every CLIP tokenizer gives (openai/clip-vit-large-patch14)
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tokenizer) == 49408
    tokenizer_2 = CLIPTokenizer.from_pretrained(str(folder / "tokenizer_2"), local_files_only=True)
    assert tokenizer_2.pad_token == "!" and tokenizer.pad_token == "<|endoftext|>"


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path, dict[str, Any]]:
    """The demo model with a full-vocabulary text encoder, written as an LDM single file, and the
    configs that describe its (tiny) sizes."""
    from transformers import CLIPTextConfig, CLIPTextModel

    pipe = build_demo_pipeline()
    text = demo_text_config(49408, 49406, 49407)
    torch.manual_seed(5)
    pipe.text_encoder = CLIPTextModel(CLIPTextConfig(**text)).eval()
    path = write_ldm_checkpoint(pipe, tmp_path_factory.mktemp("ckpt") / "tiny-sd1.safetensors")
    cfg = family_config("sd1")
    configs = {**cfg, "unet": {**cfg["unet"], **demo_unet_config()}, "vae": {**cfg["vae"], **demo_vae_config()},
               "text_encoder": {**cfg["text_encoder"], **text}}
    return pipe, path, configs


def test_single_file_checkpoint_loads_offline_bit_exact(tiny_checkpoint: tuple[Any, Path, dict[str, Any]],
                                                        tmp_path: Path) -> None:
    from transformers import CLIPTokenizer

    pipe, path, configs = tiny_checkpoint
    assert detect_family(header_shapes(path), path) == "sd1"
    loaded = load_single_file(path, configs=configs, config_root=tmp_path)
    assert (loaded.family, loaded.name, loaded.is_demo) == ("sd1", "tiny-sd1", False)
    assert loaded.model_hash is not None and len(loaded.model_hash) == 10
    for name in ("unet", "vae", "text_encoder"):
        want, got = getattr(pipe, name).state_dict(), getattr(loaded.pipe, name).state_dict()
        assert want.keys() == got.keys(), name
        assert all(torch.equal(want[k], got[k].reshape(want[k].shape)) for k in want), name

    # Same weights, tokenizer and sampler: the same image as the original pipeline.
    pipe.tokenizer = CLIPTokenizer.from_pretrained(str(next(tmp_path.iterdir()) / "tokenizer"))
    loaded.pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)

    def draw(p: Any) -> np.ndarray:
        return p("a photo of a cat", num_inference_steps=2, width=64, height=64, output_type="np",
                 generator=torch.Generator().manual_seed(3)).images[0]
    # Equal up to float rounding, not bit for bit: the loaded weights sit in the file's memory map, at
    # addresses not 64-byte aligned, and torch's single-threaded CPU kernels round such inputs
    # differently (cloned to aligned memory, the images are bit-identical). The weights are compared
    # bit for bit above; an actual difference in them or in the configs moves pixels by far more.
    assert np.abs(draw(pipe) - draw(loaded.pipe)).max() < 1e-5


def test_shipped_config_refuses_a_checkpoint_of_other_sizes(tiny_checkpoint: tuple[Any, Path, dict[str, Any]],
                                                            tmp_path: Path) -> None:
    _, path, _ = tiny_checkpoint
    with pytest.raises(CheckpointError, match=r"tiny-sd1\.safetensors"):
        load_single_file(path, config_root=tmp_path)


def test_prediction_type_override(tiny_checkpoint: tuple[Any, Path, dict[str, Any]], tmp_path: Path) -> None:
    _, path, configs = tiny_checkpoint
    loaded = load_single_file(path, configs=configs, config_root=tmp_path, prediction_type="v_prediction")
    assert loaded.pipe.scheduler.config.prediction_type == "v_prediction"
    assert configs["scheduler"]["prediction_type"] == "epsilon"  # the caller's configs are not changed


def test_diffusers_folder_loads_offline(tiny_checkpoint: tuple[Any, Path, dict[str, Any]], tmp_path: Path) -> None:
    pipe = tiny_checkpoint[0]
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = load_checkpoint(tmp_path / "pipe")
    assert (loaded.family, loaded.name) == ("sd1", "pipe")
    assert all(torch.equal(a, b) for a, b in zip(pipe.unet.state_dict().values(), loaded.pipe.unet.state_dict().values()))


@pytest.mark.parametrize(("name", "message"), [("model.ckpt", "pickle"), ("model.gguf", "expected a .safetensors"),
                                               ("missing.safetensors", "no such file")])
def test_load_checkpoint_refuses_bad_paths(tmp_path: Path, name: str, message: str) -> None:
    if not name.startswith("missing"):
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(tmp_path / name)
    (tmp_path / "folder").mkdir()
    with pytest.raises(CheckpointError, match=r"model_index\.json"):
        load_checkpoint(tmp_path / "folder")


def test_config_files_are_valid_json() -> None:
    for family in ("sd1", "sd2", "sdxl"):
        cfg = family_config(family)
        assert json.loads(json.dumps(cfg)) == cfg
        assert cfg["model_index"]["_class_name"].startswith("StableDiffusion")


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_openclip_families_load_offline_bit_exact(family: str, tmp_path: Path) -> None:
    configs = tiny_sdxl_configs() if family == "sdxl" else tiny_sd2_configs()
    source = components_from_configs(configs)
    path = write_ldm_checkpoint(source, tmp_path / f"tiny-{family}.safetensors", openclip_text=family == "sd2")

    assert detect_family(header_shapes(path), path) == family
    loaded = load_single_file(path, configs=configs, config_root=tmp_path / "cfg")
    assert (loaded.family, loaded.name) == (family, f"tiny-{family}")
    assert loaded.pipe.scheduler.config.prediction_type == ("v_prediction" if family == "sd2" else "epsilon")
    for name in ("unet", "vae", "text_encoder", "text_encoder_2")[: 4 if family == "sdxl" else 3]:
        want, got = getattr(source, name).state_dict(), getattr(loaded.pipe, name).state_dict()
        assert want.keys() == got.keys(), name
        assert all(torch.equal(want[k], got[k].reshape(want[k].shape)) for k in want), name
    assert (loaded.pipe.tokenizer_2 if family == "sdxl" else loaded.pipe.tokenizer).pad_token == "!"
    image = loaded.pipe("a photo of a cat", num_inference_steps=1, width=64, height=64, output_type="np").images[0]
    assert image.shape == (64, 64, 3)
