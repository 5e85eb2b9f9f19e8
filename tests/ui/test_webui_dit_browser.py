"""The web UI in Chromium with a Flux.1 model: `loraprompt webui` starts on the demo with a
`--checkpoint-dir` holding a tiny Flux-dev diffusers folder (tests/fixtures/dit_pipelines.py); the
checkpoint dropdown switches to it, the sampler dropdown then offers the flow-matching samplers,
the Distilled CFG Scale slider shows, and a generation with a PEFT LoRA writes Forge's infotext.
Screenshots go to artifacts/screenshots/."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loraprompt.infotext import parse_infotext, parse_lora_hashes
from tests.fixtures.dit import write_peft
from tests.fixtures.dit_pipelines import save_dit_pipeline

from .conftest import SCREENSHOTS, WebUI, open_page

pytestmark = [pytest.mark.browser, pytest.mark.slow]
FLUX_DEV_SAMPLERS = ["Euler Simple", "Euler Karras", "Euler Exponential", "Euler Beta", "DPM++ 2M Simple",
                     "DPM++ 2M SDE Simple", "UniPC Simple"]


@pytest.fixture(scope="module")
def webui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebUI]:
    root = tmp_path_factory.mktemp("webui-flux")
    save_dit_pipeline("flux", root / "checkpoints" / "tiny-flux")
    write_peft("flux", root / "Lora" / "flux_style.safetensors")
    with WebUI(root / "data", "--checkpoint-dir", str(root / "checkpoints"), "--lora-dir", str(root / "Lora"),
               timeout=180.0) as server:
        yield server


def _options(page: Any, elem_id: str) -> list[str]:
    """The choices a gradio dropdown lists when opened (closed again afterwards)."""
    page.locator(f"#{elem_id} input").click()
    options = page.get_by_role("option")
    options.first.wait_for(timeout=10_000)
    texts = [t.replace("✓", "").strip() for t in options.all_inner_texts()]  # gradio marks the selected one
    page.keyboard.press("Escape")
    return texts


def test_flux_model_offers_the_flow_matching_samplers(browser: Any, webui: WebUI) -> None:
    with open_page(browser, webui.url, "#lp-prompt textarea", "webui_flux_samplers.png", viewport=(1400, 1100)) as page:
        assert "Euler a" in _options(page, "lp-sampler")  # the demo (SD1) lists A1111's samplers
        assert not page.locator("#lp-distilled-cfg").is_visible()
        page.locator("#lp-checkpoint input").click()
        page.get_by_role("option", name="tiny-flux").click()
        page.wait_for_function("() => document.querySelector('#lp-heading').innerText.includes('tiny-flux')",
                               timeout=120_000)
        assert _options(page, "lp-sampler") == FLUX_DEV_SAMPLERS
        assert page.locator("#lp-sampler input").input_value() == "Euler Simple"
        assert page.locator("#lp-distilled-cfg").is_visible() and not page.locator("#lp-shift").is_visible()
        assert page.locator("#lp-cfg input[type=number]").input_value() == "1"
        clip_skip = page.locator("#lp-clip-skip input[type=number]")  # Flux reads its encoders as trained
        assert clip_skip.input_value() == "1" and clip_skip.is_disabled()

        page.locator("#lp-prompt textarea").fill("a lighthouse <lora:flux_style:0.8>")
        for elem_id, value in (("lp-steps", 2), ("lp-width", 64), ("lp-height", 64), ("lp-distilled-cfg", 2.5)):
            page.locator(f"#{elem_id} input[type=number]").fill(str(value))
        page.locator("#lp-seed input").fill("7")
        # hires fix on Flux: image upscalers only (the latent ones are for SD), a second img2img pass
        page.locator("#lp-hires-box").get_by_text("Hires. fix").first.click()
        assert _options(page, "lp-hr-upscaler") == ["Lanczos", "Nearest"]
        assert page.locator("#lp-hr-upscaler input").input_value() == "Lanczos"
        page.locator("#lp-hires input").check()
        page.locator("#lp-hr-scale input[type=number]").fill("1.5")
        page.locator("#lp-hr-steps input[type=number]").fill("2")
        page.locator("#lp-generate").click()
        page.wait_for_function("() => document.querySelector('#lp-infotext textarea').value.includes('lighthouse')",
                               timeout=180_000)
        fields = parse_infotext(page.locator("#lp-infotext textarea").input_value())
        page.screenshot(path=str(SCREENSHOTS / "webui_flux_generated.png"))
    assert (fields["Sampler"], fields["Schedule type"], fields["CFG scale"]) == ("Euler", "Simple", "1")
    assert fields["Distilled CFG Scale"] == "2.5" and fields["Model"] == "tiny-flux"
    assert (fields["Size-1"], fields["Hires upscale"], fields["Hires upscaler"]) == ("64", "1.5", "Lanczos")
    assert list(parse_lora_hashes(fields["Lora hashes"])) == ["flux_style"]
    assert Path(webui.data_dir / "outputs").is_dir()
