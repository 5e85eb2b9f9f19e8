"""The web UI's generation features driven by Chromium: batches with their grid and gallery, hires
fix, the img2img tab (an uploaded image, Send to img2img, gallery cards into its prompt), the X/Y
strength grid, and the checkpoint dropdown. The
server runs the built-in demo with `--checkpoint-dir` holding a second (diffusers) model.
Screenshots go to artifacts/screenshots/."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from loraprompt.infotext import parse_infotext

from .conftest import SCREENSHOTS, WebUI, open_page

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def webui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebUI]:
    from loraprompt.models.demo import build_demo_pipeline

    root = tmp_path_factory.mktemp("webui-gen")
    build_demo_pipeline(77).save_pretrained(str(root / "checkpoints" / "other-model"))
    with WebUI(root / "data", "--checkpoint-dir", str(root / "checkpoints"), timeout=180.0) as server:
        yield server


@pytest.fixture
def page(browser: Any, webui: WebUI, request: pytest.FixtureRequest) -> Iterator[Any]:
    with open_page(browser, webui.url, "#lp-prompt textarea", f"webui_{request.node.name}.png",
                   viewport=(1400, 1100)) as pg:
        yield pg


def _text(page: Any, elem_id: str, value: str) -> None:
    page.locator(f"#{elem_id}").locator("textarea, input").first.fill(value)


def _number(page: Any, elem_id: str, value: float) -> None:
    page.locator(f"#{elem_id} input[type=number]").fill(str(value))


def _small(page: Any, prompt: str, steps: int = 2, prefix: str = "") -> None:
    _text(page, f"lp-{prefix}prompt", prompt)
    _number(page, f"lp-{prefix}steps", steps)
    _number(page, f"lp-{prefix}width", 64)
    _number(page, f"lp-{prefix}height", 64)
    page.locator(f"#lp-{prefix}seed input").fill("21")


def _wait_for_infotext(page: Any, needle: str, box: str = "lp-infotext") -> dict[str, str]:
    page.wait_for_function(f"() => document.querySelector('#{box} textarea').value.includes({needle!r})",
                           timeout=180_000)
    return parse_infotext(page.locator(f"#{box} textarea").input_value())


def _saved(page: Any, box: str = "lp-saved") -> list[Path]:
    return [Path(line) for line in page.locator(f"#{box} textarea").input_value().splitlines()]


def test_batch_count_and_size_show_a_grid_and_every_image(page: Any) -> None:
    _small(page, "a batch of cats")
    _number(page, "lp-batch-count", 2)
    _number(page, "lp-batch-size", 2)
    page.locator("#lp-generate").click()
    fields = _wait_for_infotext(page, "a batch of cats")
    page.wait_for_function("() => document.querySelectorAll('#lp-batch img').length >= 4", timeout=60_000)
    saved = _saved(page)
    assert fields["Seed"] == "21" and len(saved) == 5  # the grid, then the four images
    assert saved[0].parent.parent.name == "txt2img-grids"
    with Image.open(saved[0]) as grid:
        assert grid.size == (128, 128)
    seeds = []
    for path in saved[1:]:
        with Image.open(path) as png:
            seeds.append(parse_infotext(png.text["parameters"])["Seed"])
    assert seeds == ["21", "22", "23", "24"]
    page.screenshot(path=str(SCREENSHOTS / "webui_batch.png"))
    # Send to img2img: the first image while none is selected, else the one selected, with its own seed
    page.locator("#lp-send-to-img2img").click()
    page.locator("#lp-i2i-init-image img").wait_for(timeout=30_000)
    assert page.locator("#lp-i2i-seed input").input_value() == "21"
    page.get_by_role("tab", name="txt2img").click()
    page.locator("#lp-batch .thumbnail-item").nth(2).click()
    page.locator("#lp-send-to-img2img").click()
    page.wait_for_function("() => document.querySelector('#lp-i2i-seed input').value === '23'", timeout=30_000)
    assert page.locator("#lp-i2i-init-image img").get_attribute("src").endswith("-23.png")


def test_hires_fix_upscales_with_its_own_prompt(page: Any) -> None:
    _small(page, "a hires castle")
    page.get_by_text("Hires. fix").click()
    page.locator("#lp-hires input[type=checkbox]").check()
    _number(page, "lp-hr-scale", 1.5)
    _number(page, "lp-hr-steps", 2)
    _text(page, "lp-hr-prompt", "a detailed castle")
    page.locator("#lp-generate").click()
    fields = _wait_for_infotext(page, "Hires upscale")
    assert (fields["Hires upscale"], fields["Hires upscaler"], fields["Hires prompt"]) == ("1.5", "Latent",
                                                                                           "a detailed castle")
    assert fields["Size-1"] == "64" and fields["Denoising strength"] == "0.7"
    with Image.open(_saved(page)[0]) as png:
        assert png.size == (96, 96)
    page.screenshot(path=str(SCREENSHOTS / "webui_hires.png"))
    # pasting that infotext back turns hires fix on with its settings, as A1111's paste does
    infotext = page.locator("#lp-infotext textarea").input_value()
    page.locator("#lp-hires input[type=checkbox]").uncheck()
    _number(page, "lp-hr-scale", 2)
    page.get_by_text("Paste generation parameters").click()
    page.locator("#lp-paste-text textarea").fill(infotext)
    page.locator("#lp-paste").click()
    page.wait_for_function("() => document.querySelector('#lp-hires input[type=checkbox]').checked", timeout=10_000)
    assert page.locator("#lp-hr-scale input[type=number]").input_value() == "1.5"
    assert page.locator("#lp-hr-prompt textarea").input_value() == "a detailed castle"


def test_a_pasted_hires_infotext_opens_the_hires_accordion(page: Any) -> None:
    """Found by a user review: the paste turned hires fix on inside the collapsed accordion, so
    nothing on the page showed it."""
    assert not page.locator("#lp-hires").is_visible()
    page.get_by_text("Paste generation parameters").click()
    page.locator("#lp-paste-text textarea").fill(
        "a castle\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 3, Size: 64x64, Denoising strength: 0.5, "
        "Hires upscale: 1.5, Hires upscaler: Latent")
    page.locator("#lp-paste").click()
    page.locator("#lp-hires").wait_for(state="visible", timeout=10_000)
    assert page.locator("#lp-hires input[type=checkbox]").is_checked()
    assert page.locator("#lp-hr-scale input[type=number]").input_value() == "1.5"


def test_img2img_tab_from_an_uploaded_image(page: Any, tmp_path: Path) -> None:
    init = tmp_path / "init.png"
    Image.new("RGB", (80, 60), (200, 40, 40)).save(init)
    page.get_by_role("tab", name="img2img").click()
    page.locator("#lp-i2i-generate").click()  # no init image yet: the error says what is missing
    page.get_by_text("img2img needs an init image").first.wait_for(timeout=30_000)
    _small(page, "a red square, img2img", prefix="i2i-")
    page.locator("#lp-i2i-init-image input[type=file]").set_input_files(str(init))
    page.locator("#lp-i2i-init-image img").wait_for(timeout=30_000)
    page.get_by_label("Crop and resize").check()
    _number(page, "lp-i2i-denoising", 0.4)
    page.locator("#lp-i2i-generate").click()
    fields = _wait_for_infotext(page, "img2img", "lp-i2i-infotext")
    assert fields["Denoising strength"] == "0.4" and fields["Seed"] == "21"
    saved = _saved(page, "lp-i2i-saved")[0]
    assert saved.parent.parent.name == "img2img-images"
    with Image.open(saved) as png:
        assert png.size == (64, 64)
    assert page.locator("#lp-infotext textarea").input_value() == ""  # txt2img's result is its own
    page.screenshot(path=str(SCREENSHOTS / "webui_img2img.png"))


def test_send_to_img2img_brings_the_image_and_its_parameters(page: Any, webui: WebUI) -> None:
    page.locator("#lp-send-to-img2img").click()  # nothing made yet on this page
    page.get_by_text("Generate an image first").first.wait_for(timeout=30_000)
    # a mistake the user can fix is shown in the page, not logged as a traceback (found in a review)
    assert "Generate an image first" not in webui.log.read_text(errors="replace")
    _small(page, "a blue boat <lora:demo_warm:0.6>")
    page.locator("#lp-seed input").fill("-1")  # the seed sent is the one drawn
    page.locator("#lp-generate").click()
    made = _wait_for_infotext(page, "a blue boat")
    page.locator("#lp-send-to-img2img").click()
    page.locator("#lp-i2i-init-image img").wait_for(timeout=30_000)
    assert page.locator("#lp-img2img-tab").is_visible() and not page.locator("#lp-txt2img-tab").is_visible()
    assert page.locator("#lp-i2i-prompt textarea").input_value() == "a blue boat <lora:demo_warm:0.6>"
    assert page.locator("#lp-i2i-seed input").input_value() == made["Seed"]
    assert page.locator("#lp-i2i-steps input[type=number]").input_value() == "2"
    assert page.locator("#lp-i2i-width input[type=number]").input_value() == "64"
    _number(page, "lp-i2i-denoising", 0.5)
    page.locator("#lp-i2i-generate").click()
    fields = _wait_for_infotext(page, "Denoising strength", "lp-i2i-infotext")
    assert fields["Prompt"] == "a blue boat <lora:demo_warm:0.6>" and fields["Seed"] == made["Seed"]
    assert "demo_warm" in fields["Lora hashes"] and fields["Size-1"] == "64"
    with Image.open(_saved(page, "lp-i2i-saved")[0]) as png:
        assert png.size == (64, 64)
    # a gallery card writes into the prompt of the tab chosen in its target list
    page.get_by_role("tab", name="LoRA gallery").click()
    page.locator(".lp-card", has_text="demo_sketch").first.wait_for(timeout=30_000)
    page.locator("select.lp-target").select_option(label="img2img")
    page.locator(".lp-card", has_text="demo_sketch").first.click()
    page.wait_for_function("() => document.querySelector('#lp-i2i-prompt textarea').value.includes('<lora:demo_sketch')",
                           timeout=10_000)
    assert "demo_sketch" not in page.locator("#lp-prompt textarea").input_value()
    page.get_by_role("tab", name="img2img").click()
    page.screenshot(path=str(SCREENSHOTS / "webui_send_to_img2img.png"))


def test_the_gallery_writes_into_img2img_before_that_tab_was_opened(page: Any) -> None:
    """Found by a user review: gradio builds a tab's children when it is first opened, so on a
    fresh page the gallery said "No prompt box to insert into" for the img2img target."""
    page.get_by_role("tab", name="LoRA gallery").click()
    page.locator(".lp-card", has_text="demo_sketch").first.wait_for(timeout=30_000)
    page.locator("select.lp-target").select_option(label="img2img")
    page.locator(".lp-card", has_text="demo_sketch").first.click()
    page.wait_for_function("() => (document.querySelector('#lp-i2i-prompt textarea') || {}).value?.includes('<lora:demo_sketch')",
                           timeout=10_000)
    assert "No prompt box" not in page.locator(".lp-status").inner_text()


def test_send_to_img2img_takes_the_size_of_a_hires_image(page: Any) -> None:
    """As A1111 sends an image: img2img's width and height are the image's (a hires result is
    larger than the infotext's Size, which is the first pass's)."""
    _small(page, "a hires boat")
    page.get_by_text("Hires. fix").click()
    page.locator("#lp-hires input[type=checkbox]").check()
    _number(page, "lp-hr-scale", 2)
    _number(page, "lp-hr-steps", 1)
    page.locator("#lp-generate").click()
    fields = _wait_for_infotext(page, "a hires boat")
    assert fields["Size-1"] == "64" and fields["Hires upscale"] == "2"
    page.locator("#lp-send-to-img2img").click()
    page.locator("#lp-i2i-init-image img").wait_for(timeout=30_000)
    page.wait_for_function("() => document.querySelector('#lp-i2i-width input[type=number]').value === '128'", timeout=10_000)
    assert page.locator("#lp-i2i-height input[type=number]").input_value() == "128"


def test_sizes_that_are_not_multiples_of_8_never_give_an_image_of_another_size(page: Any) -> None:
    """Found in a browser pass: Send to img2img under an X/Y grid put the grid's own size (220x149)
    in img2img, which made a 216x144 image whose infotext said 220x149; txt2img at 100 wide showed
    diffusers' raw message. Sizes move by 8 (the VAE's factor), as A1111's sliders do."""
    _small(page, "an odd grid")
    page.get_by_text("X/Y strength grid").click()
    _text(page, "lp-xy-weights", "0, 1")
    _text(page, "lp-xy-seeds", "1, 2")
    page.locator("#lp-xy-generate").click()
    page.wait_for_function("() => document.querySelector('#lp-saved textarea').value.includes('txt2img-grids')",
                           timeout=240_000)
    with Image.open(_saved(page)[0]) as grid:
        size = grid.size
    assert size[0] % 8 or size[1] % 8, size  # the labelled grid is not a multiple of 8
    page.locator("#lp-send-to-img2img").click()
    page.locator("#lp-i2i-init-image img").wait_for(timeout=30_000)
    page.wait_for_function("() => document.querySelector('#lp-i2i-width input[type=number]').value !== '64'",
                           timeout=10_000)
    width = int(page.locator("#lp-i2i-width input[type=number]").input_value())
    height = int(page.locator("#lp-i2i-height input[type=number]").input_value())
    assert width % 8 == 0 and height % 8 == 0 and abs(width - size[0]) < 8 and abs(height - size[1]) < 8
    page.locator("#lp-i2i-generate").click()
    fields = _wait_for_infotext(page, "Denoising strength", "lp-i2i-infotext")
    with Image.open(_saved(page, "lp-i2i-saved")[0]) as png:
        assert png.size == (int(fields["Size-1"]), int(fields["Size-2"]))
    page.get_by_role("tab", name="txt2img").click()
    _number(page, "lp-width", 100)
    page.locator("#lp-generate").click()
    page.get_by_text("width and height must be multiples of 8").first.wait_for(timeout=30_000)


def test_xy_strength_grid_is_one_labelled_image(page: Any) -> None:
    _small(page, "a lighthouse <lora:demo_warm:1>")
    page.get_by_text("X/Y strength grid").click()
    lora = page.locator("#lp-xy-lora input")
    lora.fill("demo_warm")
    lora.press("Enter")
    _text(page, "lp-xy-weights", "0, 0.5, 1")
    _text(page, "lp-xy-seeds", "3, 4")
    page.locator("#lp-xy-generate").click()
    page.wait_for_function("() => document.querySelector('#lp-saved textarea').value.includes('txt2img-grids')",
                           timeout=240_000)
    grid_path = _saved(page)[0]
    with Image.open(grid_path) as grid:
        assert grid.width > 2 * 64 and grid.height > 3 * 64  # cells plus the label margins
        assert parse_infotext(grid.text["parameters"])["Prompt"] == "a lighthouse <lora:demo_warm:0>"
    page.wait_for_function("() => document.querySelectorAll('#lp-batch img').length >= 6", timeout=60_000)
    page.screenshot(path=str(SCREENSHOTS / "webui_xy_grid.png"))


def test_xy_dropdowns_start_on_two_loras_and_list_one_added_later(page: Any, webui: WebUI) -> None:
    import shutil

    page.get_by_text("X/Y strength grid").click()
    rows, columns = page.locator("#lp-xy-lora input"), page.locator("#lp-xy-lora2 input")
    assert rows.input_value() and columns.input_value() and rows.input_value() != columns.input_value()
    lora_dir = webui.data_dir / "models" / "Lora"
    shutil.copy(lora_dir / "demo_warm.safetensors", lora_dir / "added_while_running.safetensors")
    try:
        # once the gallery shows it, the library has it; the X/Y lists built at startup did not
        page.get_by_role("tab", name="LoRA gallery").click()
        page.locator(".lp-card .lp-name", has_text="added_while_running").wait_for(timeout=30_000)
        page.reload()
        page.locator("#lp-prompt textarea").wait_for()
        page.get_by_text("X/Y strength grid").click()
        columns.click()
        page.get_by_role("option", name="added_while_running").wait_for(timeout=20_000)
    finally:
        (lora_dir / "added_while_running.safetensors").unlink()


def test_xy_grid_with_one_lora_on_both_axes_is_refused_with_a_message(page: Any) -> None:
    _small(page, "a refused grid")
    page.get_by_text("X/Y strength grid").click()
    page.locator("#lp-xy-columns label", has_text="Second LoRA weight").click()
    columns = page.locator("#lp-xy-lora2 input")
    columns.fill("Demo_Warm")  # demo_warm spelled another way is the same file
    columns.press("Enter")
    rows = page.locator("#lp-xy-lora input")
    rows.fill("demo_warm")
    rows.press("Enter")
    saved = page.locator("#lp-saved textarea").input_value()
    page.locator("#lp-xy-generate").click()
    page.get_by_text("both set the weight of 'demo_warm'").first.wait_for(timeout=30_000)
    assert page.locator("#lp-saved textarea").input_value() == saved  # nothing was generated


def test_checkpoint_dropdown_switches_the_model(page: Any) -> None:
    assert "loraprompt-demo" in page.locator("#lp-heading").inner_text()
    page.locator("#lp-checkpoint input").click()
    page.get_by_role("option", name="other-model").click()
    page.wait_for_function("() => document.querySelector('#lp-heading').innerText.includes('other-model')",
                           timeout=120_000)
    assert not page.locator("#lp-demo-notice").is_visible()
    _small(page, "a switched model")
    page.locator("#lp-generate").click()
    fields = _wait_for_infotext(page, "a switched model")
    assert fields["Model"] == "other-model"
    page.screenshot(path=str(SCREENSHOTS / "webui_checkpoint.png"))
