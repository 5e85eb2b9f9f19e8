"""The web UI engine's A1111 generation features on the real (tiny) demo pipeline: batches with
seed+i and a grid, AND as a weighted sum of noise predictions, img2img with its resize modes, hires
fix with its own prompt and `hr=` strengths, the X/Y strength grid, and switching checkpoints."""

from __future__ import annotations

import gc
import os
import weakref
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import loraprompt
from loraprompt.infotext import parse_infotext
from loraprompt.models import load_demo
from loraprompt.models.checkpoint import CheckpointError, load_checkpoint, scan_checkpoints
from loraprompt.ui.hires import HiresOptions, hires_lora_prompt, hires_size
from loraprompt.ui.img2img import resize_image
from loraprompt.ui.outputs import png_bytes
from loraprompt.ui.txt2img import Txt2Img, Txt2ImgRequest
from loraprompt.ui.xy_grid import (
    StrengthGrid,
    image_grid,
    labelled_grid,
    parse_values,
    render_strength_grid,
    set_lora_weight,
)

from .conftest import small_request

os.environ["HF_HUB_OFFLINE"] = "1"


def _request(prompt: str, **kw: Any) -> Txt2ImgRequest:
    return small_request(prompt, **{"steps": 2, **kw})


def _pixels(image: Any) -> np.ndarray:
    return np.asarray(image, dtype=np.float32)


def test_batch_uses_seed_plus_i_with_infotext_per_image_and_a_grid(engine: Txt2Img) -> None:
    result = engine.generate(_request("a cat", batch_count=2, batch_size=2))
    assert [g.seed for g in result.images] == [11, 12, 13, 14]
    for g in result.images:
        with Image.open(g.path) as png:
            assert parse_infotext(png.text["parameters"])["Seed"] == str(g.seed)
    assert result.grid is not None and result.grid.size == (128, 128)  # 4 images: 2 rows of 2, as A1111
    assert result.grid_path is not None and result.grid_path.parent.parent.name == "txt2img-grids"
    assert np.array_equal(_pixels(result.grid.crop((64, 0, 128, 64))), _pixels(result.images[1].image))
    # image i of a batch is the image a single generation with seed+i draws
    for g in (result.images[1], result.images[2]):
        alone = engine.generate(_request("a cat", seed=g.seed))
        assert np.abs(_pixels(alone.image) - _pixels(g.image)).max() <= 2.0, g.seed
    with pytest.raises(ValueError, match="batch size"):
        engine.generate(_request("a cat", batch_size=9))


def test_a_seed_past_32_bits_is_used_as_given(engine: Txt2Img) -> None:
    """A1111 uses a seed as given (processing.py:904, no wrap) and its infotext says so: here 4294967296
    was wrapped to 0 and the infotext said Seed: 0, so a user's seed silently changed in what was
    saved. (torch's CPU generator seeds with 32 bits, so the image is seed 0's, as with A1111's CPU
    noise.) Its batch goes on past 2**32 too."""
    result = engine.generate(_request("a cat", seed=2**32, batch_size=2))
    assert [g.seed for g in result.images] == [2**32, 2**32 + 1]
    assert parse_infotext(result.infotext)["Seed"] == str(2**32)


def test_generate_without_saving_keeps_the_images_in_memory(engine: Txt2Img) -> None:
    folder = engine.outputs_dir / "txt2img-images"
    before = sorted(folder.rglob("*")) if folder.exists() else []
    unsaved = engine.generate(_request("a cat <lora:demo_warm:0.5>", batch_size=2), save=False)
    assert (sorted(folder.rglob("*")) if folder.exists() else []) == before
    assert unsaved.path is None and unsaved.grid_path is None and [g.path for g in unsaved.images] == [None, None]
    assert unsaved.grid is not None  # the grid is still drawn
    saved = engine.generate(_request("a cat <lora:demo_warm:0.5>", batch_size=2))
    for u, s in zip(unsaved.images, saved.images):
        assert u.infotext == s.infotext and np.array_equal(_pixels(u.image), _pixels(s.image))
        assert s.path is not None and png_bytes(u.image, u.infotext) == s.path.read_bytes()


def test_and_is_a1111s_weighted_sum_of_noise_predictions(engine: Txt2Img) -> None:
    def draw(prompt: str, cfg: float = 7.0) -> np.ndarray:
        return _pixels(engine.generate(_request(prompt, cfg_scale=cfg, steps=1)).image)

    def same(a: np.ndarray, b: np.ndarray) -> bool:  # equal up to float noise in the batched UNet
        return bool(np.abs(a - b).max() <= 2.0 and np.abs(a - b).mean() < 0.02)

    cat, dog = draw("a cat"), draw("a dog")
    # uncond + 7*(0.5*(c-u) + 0.5*(c-u)) is uncond + 7*(c-u): the parts add up to the plain prompt
    assert same(draw("a cat :0.5 AND a cat :0.5"), cat)
    # a part's weight multiplies its guidance: weight 2 at CFG 3.5 is weight 1 at CFG 7
    assert same(draw("a cat :2", cfg=3.5), cat)
    # CFG 1 (no negative half in diffusers): A1111 still subtracts the negative
    assert same(draw("a cat :0.5 AND a cat :0.5", cfg=1.0), draw("a cat", cfg=1.0))
    both = draw("a cat AND a dog")
    assert np.abs(both - cat).mean() > 0.1 and np.abs(both - dog).mean() > 0.1  # 10x what `same` allows
    result = engine.generate(_request("<lora:demo_warm:0.5> a cat AND a dog"))
    assert result.diagnostics == [] and [a.name for a in result.applied] == ["demo_warm"]
    assert parse_infotext(result.infotext)["Prompt"] == "<lora:demo_warm:0.5> a cat AND a dog"


def test_batch_with_prompt_editing_and_and(engine: Txt2Img) -> None:
    result = engine.generate(_request("a [cat:dog:0.5] AND a bird :0.7", batch_size=2))
    assert len(result.images) == 2
    single = engine.generate(_request("a [cat:dog:0.5] AND a bird :0.7", seed=12))
    assert np.abs(_pixels(single.image) - _pixels(result.images[1].image)).max() <= 2.0


def test_img2img_denoising_and_infotext(engine: Txt2Img, tmp_path: Path) -> None:
    init = engine.generate(_request("a red house", steps=3)).image
    init.save(tmp_path / "init.png")
    # 2 steps at 0.2 would run int(0.4) = 0 steps: one step runs, from the noise level asked for
    light = engine.generate(_request("a blue house", init_image=str(tmp_path / "init.png"), denoising_strength=0.2))
    heavy = engine.generate(_request("a blue house", init_image=init, denoising_strength=1.0))
    base = _pixels(init)
    assert np.abs(_pixels(light.image) - base).mean() < np.abs(_pixels(heavy.image) - base).mean()
    fields = parse_infotext(light.infotext)
    assert fields["Denoising strength"] == "0.2" and fields["Size-1"] == "64"
    assert light.path.parent.parent.name == "img2img-images"
    steps: list[tuple[int, int]] = []
    engine.generate(_request("x", steps=10, init_image=init, denoising_strength=0.3), on_step=lambda i, n: steps.append((i, n)))
    assert steps == [(1, 3), (2, 3), (3, 3)]  # int(10 * 0.3) steps run, as in A1111
    wide = engine.generate(_request("x", init_image=init, width=96, resize_mode="Crop and resize", batch_size=2))
    assert wide.image.size == (96, 64) and len(wide.images) == 2
    latent = engine.generate(_request("x", init_image=init, width=128, height=128, resize_mode="Just resize (latent upscale)"))
    assert latent.image.size == (128, 128)
    with pytest.raises(ValueError, match="resize mode"):
        engine.generate(_request("x", init_image=init, resize_mode="Stretch"))
    with pytest.raises(ValueError, match=r"init image .*nope\.png"):
        engine.generate(_request("x", init_image=str(tmp_path / "nope.png")))


def test_resize_modes_match_a1111() -> None:
    image = Image.new("RGB", (200, 100), (255, 0, 0))
    image.paste((0, 0, 255), box=(0, 0, 50, 100))  # a blue left quarter
    stretched = resize_image("Just resize", image, 64, 64)
    assert stretched.size == (64, 64) and stretched.getpixel((2, 32))[2] > 200
    cropped = resize_image("Crop and resize", image, 64, 64)  # scaled to 128x64, the middle 64 kept
    assert cropped.getpixel((2, 32))[0] > 200 and cropped.getpixel((61, 32))[0] > 200
    filled = resize_image("Resize and fill", image, 64, 64)  # scaled to 64x32, bands filled from the edges
    top, bottom, middle = filled.getpixel((2, 2)), filled.getpixel((60, 62)), filled.getpixel((40, 32))
    assert top[2] > 200 and bottom[0] > 200 and middle[0] > 200
    assert resize_image("Just resize (latent upscale)", Image.new("RGB", (70, 45)), 64, 64).size == (64, 40)


def test_hires_fix_latent_and_image_upscalers(engine: Txt2Img) -> None:
    steps: list[tuple[int, int]] = []
    result = engine.generate(_request("a cat", steps=4, hires=HiresOptions(scale=1.5, steps=4, denoising_strength=0.5)),
                             on_step=lambda i, n: steps.append((i, n)))
    assert result.image.size == (96, 96)
    assert steps[-1] == (6, 6)  # 4 first-pass steps, then int(4 * 0.5) hires steps
    fields = parse_infotext(result.infotext)
    assert (fields["Size-1"], fields["Denoising strength"], fields["Hires upscale"]) == ("64", "0.5", "1.5")
    assert (fields["Hires steps"], fields["Hires upscaler"]) == ("4", "Latent")
    assert "Hires prompt" not in fields and "Hires resize" not in fields
    lanczos = engine.generate(_request("a cat", hires=HiresOptions(upscaler="Lanczos", resize_x=128, resize_y=80,
                                                                   prompt="a dog", negative_prompt="blurry")))
    assert lanczos.image.size == (128, 80)
    fields = parse_infotext(lanczos.infotext)
    # "128x80" reads back as Hires resize-1/-2, as A1111's paste reads it
    assert (fields["Hires resize-1"], fields["Hires resize-2"], fields["Hires upscaler"]) == ("128", "80", "Lanczos")
    assert (fields["Hires prompt"], fields["Hires negative prompt"]) == ("a dog", "blurry")
    assert "Hires steps" not in fields and "Hires upscale" not in fields
    assert "Hires resize: 128x80" in lanczos.infotext


def test_hires_sizes_follow_a1111() -> None:
    assert hires_size(512, 512, HiresOptions(scale=1.5)) == (768, 768, 768, 768)
    assert hires_size(512, 768, HiresOptions(resize_x=1024)) == (1024, 1536, 1024, 1536)
    assert hires_size(512, 768, HiresOptions(resize_y=1024)) == (680, 1024, 680, 1024)  # rounded to 8
    assert hires_size(512, 512, HiresOptions(resize_x=1024, resize_y=512)) == (1024, 1024, 1024, 512)
    with pytest.raises(ValueError, match="upscaler"):
        HiresOptions(upscaler="ESRGAN").check()


def test_hires_lora_strengths_follow_the_precedence() -> None:
    assert hires_lora_prompt("a <lora:x:1:hr=0.3> b <lora:y:0.5>", "") == "<lora:x:0.3> <lora:y:0.5>"
    assert hires_lora_prompt("a <lora:x:1:hrunet=0.2>", "") == "<lora:x:1:0.2>"
    assert hires_lora_prompt("a <lora:x:1:hr=0.3>", "a dog") == "<lora:x:0.3>"  # hires prompt without tags
    assert hires_lora_prompt("a <lora:x:1:hr=0.3>", "a dog <lora:z:2>") == "a dog <lora:z:2>"


def test_hr_strength_reaches_the_hires_pass(engine: Txt2Img) -> None:
    hires = HiresOptions(scale=1.5, steps=2, denoising_strength=0.6)
    by_key = engine.generate(_request("<lora:demo_warm:1:hr=0.3> a cat", hires=hires))
    by_prompt = engine.generate(_request("<lora:demo_warm:1> a cat",
                                         hires=replace(hires, prompt="<lora:demo_warm:0.3> a cat")))
    full = engine.generate(_request("<lora:demo_warm:1> a cat", hires=hires))
    assert np.array_equal(_pixels(by_key.image), _pixels(by_prompt.image))
    assert np.abs(_pixels(by_key.image) - _pixels(full.image)).mean() > 0.5
    plain = engine.generate(_request("a cat"))
    again = engine.generate(_request("a cat"))
    assert np.array_equal(_pixels(plain.image), _pixels(again.image))  # the hires LoRAs were removed


def test_a_message_from_the_hires_prompt_says_so(engine: Txt2Img) -> None:
    """Found by a user review: an unknown LoRA in the hires prompt read like one in the prompt."""
    hires = HiresOptions(scale=1.5, steps=1, denoising_strength=0.6, prompt="a cat <lora:nosuch2:1>")
    result = engine.generate(_request("a cat <lora:nosuch:1>", hires=hires), save=False)
    first = [d.message for d in result.diagnostics if "nosuch" in d.message and "nosuch2" not in d.message]
    second = [d.message for d in result.diagnostics if "nosuch2" in d.message]
    assert first and not any(m.startswith("hires pass: ") for m in first)
    assert second and all(m.startswith("hires pass: ") for m in second)


def test_hires_refuses_img2img(engine: Txt2Img) -> None:
    with pytest.raises(ValueError, match="hires fix is a txt2img feature"):
        engine.generate(_request("x", init_image=Image.new("RGB", (64, 64)), hires=HiresOptions()))


def test_values_and_lora_weight_rewriting() -> None:
    assert parse_values("0, 0.5,1", "w") == [0.0, 0.5, 1.0]
    assert parse_values("0-1 (+0.25)", "w") == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert parse_values("0-1 [3]", "w") == [0.0, 0.5, 1.0]
    assert parse_values("1-3", "w") == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="weights: cannot read 'abc'"):
        parse_values("0, abc", "weights")
    with pytest.raises(ValueError, match="whole numbers"):
        parse_values("1.5", "seeds", integers=True)
    assert set_lora_weight("a <lora:x:1:0.5:start=2> b", "x", 0.3) == "a <lora:x:0.3:start=2> b"
    assert set_lora_weight("a cat", "x", 0.75) == "a cat <lora:x:0.75>"


def test_image_grid_rows_like_a1111() -> None:
    tiles = [Image.new("RGB", (8, 8), (i * 40, 0, 0)) for i in range(6)]
    assert image_grid(tiles).size == (24, 16)  # 6 images: 2 rows of 3
    assert image_grid(tiles[:3]).size == (24, 8)
    assert image_grid(tiles[:5]).size == (40, 8)  # 5 is prime: one row


def test_strength_grid_renders_labelled_cells(engine: Txt2Img) -> None:
    base = _request("a cat <lora:demo_warm:1>", seed=5)
    grid = render_strength_grid(engine, base, StrengthGrid("demo_warm", [0.0, 1.0], seeds=[5, 6]))
    assert len(grid.cells) == 4 and grid.path.is_file() and grid.path.parent.parent.name == "txt2img-grids"
    assert [c.seed for c in grid.cells] == [5, 6, 5, 6]
    assert parse_infotext(grid.cells[3].infotext)["Prompt"] == "a cat <lora:demo_warm:1>"
    assert parse_infotext(grid.cells[0].infotext)["Prompt"] == "a cat <lora:demo_warm:0>"
    w, h = grid.image.size
    left, top = w - 128, h - 128
    assert left > 20 and top > 8  # room for the labels
    assert np.array_equal(_pixels(grid.image.crop((left + 64, top + 64, w, h))), _pixels(grid.cells[3].image))
    labels = np.asarray(grid.image.crop((0, top, left, h)).convert("L"))
    assert labels.min() < 100 and labels.max() == 255  # dark text drawn on white
    again = engine.generate(replace(base, seed=6))
    assert np.array_equal(_pixels(again.image), _pixels(grid.cells[3].image))
    two = render_strength_grid(engine, base, StrengthGrid("demo_warm", [0.5], columns="Second LoRA weight",
                                                          lora2="demo_neon", weights2=[0.0, 1.0]))
    assert [parse_infotext(c.infotext)["Prompt"] for c in two.cells] == [
        "a cat <lora:demo_warm:0.5> <lora:demo_neon:0>", "a cat <lora:demo_warm:0.5> <lora:demo_neon:1>"]
    with pytest.raises(ValueError, match="second LoRA"):
        render_strength_grid(engine, base, StrengthGrid("demo_warm", [1.0], columns="Second LoRA weight"))


def test_grid_column_labels_wider_than_small_cells_wrap_instead_of_overlapping() -> None:
    cells = [[Image.new("RGB", (64, 64), (200, 30, 30)) for _ in range(3)] for _ in range(2)]
    labels = ["a_rather_long_lora_name: 0.25", "demo_neon: 0.5", "Seed: 1234567890"]
    grid = labelled_grid(cells, ["demo_warm: 0", "demo_warm: 1"], labels)
    left, top = grid.size[0] - 3 * 64, grid.size[1] - 2 * 64
    band = np.asarray(grid.crop((left, 0, grid.size[0], top)).convert("L"))
    for c in range(3):
        inside = band[:, c * 64 + 1:(c + 1) * 64 - 1]
        assert inside.min() < 128, f"column {c} has no label"  # every label is drawn ...
        for x in (c * 64, (c + 1) * 64 - 1):  # ... and none reaches into its neighbour's cell
            assert band[:, x].min() > 200, f"label ink on the boundary of column {c} at x={x}"
    assert grid.crop((left, top, left + 64, top + 64)).getpixel((5, 5)) == (200, 30, 30)


def test_strength_grid_axis_replaces_a_tag_written_in_another_case(engine: Txt2Img) -> None:
    # the resolver finds demo_neon for `Demo_Neon`, so the axis rewrites that tag instead of adding one
    assert set_lora_weight("a <lora:Demo_Neon:0.5> b", "demo_neon", 1, engine.library) == "a <lora:Demo_Neon:1> b"
    assert set_lora_weight("a <lora:demo_warm:0.5>", "demo_neon", 1, engine.library) == (
        "a <lora:demo_warm:0.5> <lora:demo_neon:1>")
    grid = render_strength_grid(engine, _request("a cat <lora:Demo_Neon:0.5>"), StrengthGrid("demo_neon", [0.0, 1.0],
                                                                                               seeds=[3]))
    assert [parse_infotext(c.infotext)["Prompt"] for c in grid.cells] == [
        "a cat <lora:Demo_Neon:0>", "a cat <lora:Demo_Neon:1>"]


def test_strength_grid_axis_writes_a_name_no_tag_can_carry_as_the_gallery_does(engine: Txt2Img, tmp_path: Path) -> None:
    """`<lora:C#odd:0.5>` would be cut at the '#' (a prompt comment) and apply nothing: the axis
    writes the card's stand-in name with the file's hash=, which finds it, and rewrites it per cell."""
    import shutil

    from safetensors.torch import load_file, save_file

    lora_dir = tmp_path / "Lora"
    lora_dir.mkdir()
    source = Path(engine.library.roots[0]) / "demo_warm.safetensors"
    shutil.copy(source, lora_dir / "A#alias.safetensors")  # its ss_output_name is demo_warm: the alias
    save_file({k: v * 0.5 for k, v in load_file(str(source)).items()}, str(lora_dir / "C#odd.safetensors"))  # no alias
    library = loraprompt.Library([str(lora_dir)], cache_dir=str(tmp_path / "cache"), auto_check_s=0)
    assert set_lora_weight("a cat", "A#alias", 0.5, library) == "a cat <lora:demo_warm:0.5>"
    entry = library.resolve("C#odd").entry
    assert entry is not None
    short = library.hashes(entry)["a1111_short"]
    tagged = set_lora_weight("a cat", "C#odd", 0.5, library)
    assert tagged == f"a cat <lora:C_odd:0.5:hash={short}>"
    (found,) = loraprompt.parse(tagged).loras
    assert library.resolve(found.name, hash=found.hash).entry == entry
    assert set_lora_weight(tagged, "C#odd", 1, library) == f"a cat <lora:C_odd:1:hash={short}>"
    with pytest.raises(ValueError, match="cannot carry it"):  # no library to find another name in
        set_lora_weight("a cat", "C#odd", 1)


def _files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.png")) if folder.exists() else []


@pytest.mark.parametrize(("spec", "message"), [
    (StrengthGrid("no_such_lora", [0.0, 1.0], seeds=[1]), "rows: LoRA 'no_such_lora' not found"),
    (StrengthGrid("demo_warm", [0.0, 1.0], columns="Second LoRA weight", lora2="no_such_lora", weights2=[1.0]),
     "columns: LoRA 'no_such_lora' not found"),
    (StrengthGrid("demo_warm", [0.0, 1.0], columns="Second LoRA weight", lora2="demo_warm", weights2=[0.0, 1.0]),
     "both set the weight of 'demo_warm'"),
    (StrengthGrid("demo_warm", [0.0, 1.0], columns="Second LoRA weight", lora2="Demo_Warm", weights2=[0.0, 1.0]),
     "both set the weight of 'demo_warm' \\(as 'Demo_Warm'\\)"),
])
def test_strength_grid_refuses_before_generating(engine: Txt2Img, spec: StrengthGrid, message: str) -> None:
    before = _files(engine.outputs_dir)
    with pytest.raises(ValueError, match=message) as refused:
        render_strength_grid(engine, _request("a cat"), spec)
    assert str(refused.value).count("no_such_lora") <= 1  # named once
    assert _files(engine.outputs_dir) == before  # nothing was generated


def _save_demo_folder(folder: Path, seed: int) -> Path:
    from loraprompt.models.demo import build_demo_pipeline

    build_demo_pipeline(seed).save_pretrained(str(folder))
    return folder


def test_scan_checkpoints_lists_models_not_loras(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    _save_demo_folder(tmp_path / "diffusers" / "other", 99)
    save_file({"model.diffusion_model.input_blocks.0.0.weight": np.zeros((4, 4, 3, 3), np.float32)},
              str(tmp_path / "ldm-model.safetensors"))
    save_file({"lora_unet_x.lora_down.weight": np.zeros((4, 4), np.float32)}, str(tmp_path / "a-lora.safetensors"))
    (tmp_path / "broken.safetensors").write_bytes(b"nope")
    found = scan_checkpoints(tmp_path)
    assert found == {"diffusers/other": tmp_path / "diffusers" / "other", "ldm-model": tmp_path / "ldm-model.safetensors"}
    with pytest.raises(CheckpointError, match="does not exist"):
        scan_checkpoints(tmp_path / "missing")


def test_switching_checkpoints_releases_the_old_model(tmp_path: Path) -> None:
    from loraprompt.integrations.diffusers import patcher_for

    model, lora_dir = load_demo(tmp_path)
    other = _save_demo_folder(tmp_path / "other", 99)
    library = loraprompt.Library([str(lora_dir)], cache_dir=str(tmp_path / "cache"))
    engine = Txt2Img(model, library, tmp_path / "outputs")
    first = engine.generate(_request("a cat <lora:demo_warm:1>"))
    old_unet = weakref.ref(model.pipe.unet)
    del model
    loaded = engine.switch_model(lambda: load_checkpoint(other), lambda: load_demo(tmp_path)[0])
    gc.collect()
    assert old_unet() is None  # nothing (patcher, backups, img2img pipeline) keeps the old model alive
    assert loaded.name == "other" and engine.model is loaded
    assert patcher_for(loaded.pipe).components["unet"] is loaded.pipe.unet
    second = engine.generate(_request("a cat <lora:demo_warm:1>"))
    assert parse_infotext(second.infotext)["Model"] == "other"
    assert np.abs(_pixels(first.image) - _pixels(second.image)).mean() > 1.0

    def broken() -> Any:
        raise CheckpointError(tmp_path / "bad.safetensors", "cannot load")

    with pytest.raises(CheckpointError, match=r"bad\.safetensors"):
        engine.switch_model(broken, lambda: load_checkpoint(other))
    assert engine.model.name == "other"  # the previous model is back and generates
    assert engine.generate(_request("a cat")).image.size == (64, 64)


def test_paste_fills_hires_and_denoising_like_a1111() -> None:
    from loraprompt.ui.webui import PASTE_EXTRAS, paste_extras

    text = ('a cat\nSteps: 20, Sampler: Euler, Seed: 1, Size: 512x512, Denoising strength: 0.45, Hires upscale: 1.5, '
            'Hires steps: 12, Hires upscaler: Lanczos, Hires prompt: "a cat, detailed"')
    values = dict(zip(PASTE_EXTRAS, paste_extras(text)))
    assert (values["hires"], values["hr-upscaler"], values["hr-scale"], values["hr-steps"]) == (True, "Lanczos", 1.5, 12.0)
    assert (values["hr-denoising"], values["hr-prompt"], values["hr-negative"]) == (0.45, "a cat, detailed", "")
    assert (values["hr-resize-x"], values["hr-resize-y"]) == (0, 0)
    resized = dict(zip(PASTE_EXTRAS, paste_extras("x\nSteps: 2, Seed: 1, Size: 8x8, Denoising strength: 0.5, "
                                                   "Hires resize: 1024x0, Hires upscaler: Latent")))
    assert (resized["hr-resize-x"], resized["hr-resize-y"], resized["hr-upscaler"]) == (1024.0, 0.0, "Latent")
    img2img = dict(zip(PASTE_EXTRAS, paste_extras("x\nSteps: 2, Seed: 1, Size: 8x8, Denoising strength: 0.3")))
    assert img2img["hires"] is False and img2img["denoising"] == 0.3
