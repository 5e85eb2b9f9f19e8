"""Fixtures for the gallery tests: a LoRA folder of real files (safetensors, PNG/JPEG previews,
sidecars, hostile names), the gallery demo app served on loopback under current gradio and under
gradio 3.41.2 (Automatic1111's), and a headless Chromium driven by Playwright."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save_file

from tests.fixtures.browser import REPO, ServerProcess, gradio_pythons

SCREENSHOTS = REPO / "artifacts" / "screenshots"
XSS = "\"'><img src=x onerror=alert(1)>"

SD1_KEYS = {
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": (4, 768),
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": (320, 4),
}
SDXL_KEYS = {
    "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight": (4, 2048),
    "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_up.weight": (640, 4),
    "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 1280),
}


def write_lora(path: Path, keys: dict[str, tuple[int, ...]], metadata: dict[str, str] | None = None, seed: int = 0) -> Path:
    """A small real safetensors LoRA written by the safetensors library."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: rng.standard_normal(s).astype(np.float16) for k, s in keys.items()}, str(path), metadata=metadata)
    return path


def write_preview(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (640, 480)) -> Path:
    """A real image file (format from the extension) of one colour with a diagonal stripe."""
    image = Image.new("RGB", size, color)
    for i in range(min(size)):
        image.putpixel((i, i), (255, 255, 255))
    image.save(path)
    return path


def make_gallery_folder(root: Path) -> Path:
    """`root/Lora` with SD1 and SDXL files in subfolders, previews, sidecars and a hostile name."""
    lora = root / "Lora"
    tags = json.dumps({"10_cat": {"orange cat": 40, "whiskers": 12}})
    write_lora(lora / "characters" / "catgirl.safetensors", SD1_KEYS,
               {"ss_output_name": "catgirl_v2", "ss_base_model_version": "sd_v1", "ss_tag_frequency": tags,
                "ss_network_dim": "16", "ss_network_alpha": "8"}, seed=1)
    write_preview(lora / "characters" / "catgirl.png", (200, 80, 40))
    (lora / "characters" / "catgirl.json").write_text(json.dumps({
        "activation text": "catgirl, cat ears", "preferred weight": 0.7, "notes": "great with sunsets",
        "negative text": "extra tails", "sd version": "SD1", "modelId": 12345}), encoding="utf-8")
    write_lora(lora / "styles" / "watercolor.safetensors", SDXL_KEYS,
               {"modelspec.architecture": "stable-diffusion-xl-v1-base/lora", "modelspec.trigger_phrase": "wcstyle"}, seed=2)
    write_preview(lora / "styles" / "watercolor.preview.jpg", (40, 120, 220))
    sketch_tags = json.dumps({"5_sketch": {f"pencil stroke {i}": 30 - i for i in range(10)}})  # more chips than fit
    write_lora(lora / "styles" / "sketchy_lines.safetensors", SDXL_KEYS, {"ss_tag_frequency": sketch_tags}, seed=3)
    write_lora(lora / "styles" / "deep" / "ink_wash.safetensors", SD1_KEYS, {"ss_base_model_version": "sd_v1"}, seed=4)
    write_preview(lora / "styles" / "deep" / "ink_wash.webp", (20, 20, 20))
    write_lora(lora / "editable.safetensors", SD1_KEYS, {}, seed=5)
    write_lora(lora / f"{XSS}.safetensors", SD1_KEYS, {"ss_output_name": XSS, "ss_tag_frequency": json.dumps({"x": {XSS: 3}})}, seed=6)
    (lora / f"{XSS}.json").write_text(json.dumps({"notes": XSS + "\nsecond line", "description": XSS}), encoding="utf-8")
    return lora


@pytest.fixture
def gallery_folder(tmp_path: Path) -> Path:
    """A fresh copy of the gallery fixture folder."""
    return make_gallery_folder(tmp_path)


class DemoServer(ServerProcess):
    """The gallery demo running in a child process on 127.0.0.1."""

    what = "gallery demo"

    def __init__(self, python: str, lora: Path, cache: Path, family: str = "none") -> None:
        super().__init__(cache / "server.log")
        self.lora = lora
        cmd = [python, "-m", "loraprompt.ui.gallery_demo", "--lora-dir", str(lora), "--port", str(self.port),
               "--cache-dir", str(cache), "--family", family, "--poll", "0.5"]
        self.start(cmd, "loraprompt/gallery/state", timeout=90.0)
        self.gradio = self.log.read_text(errors="replace").split("gradio ")[-1].split(")")[0]


def demo_engine(root: Path) -> Any:
    """A `Txt2Img` on the built-in demo model, its LoRA folder and a library cache under `root`."""
    import loraprompt
    from loraprompt.models import load_demo
    from loraprompt.ui.txt2img import Txt2Img

    model, lora_dir = load_demo(root)
    return Txt2Img(model, loraprompt.Library([str(lora_dir)], cache_dir=str(root / "cache")), root / "outputs")


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A `Txt2Img` on the demo model, one per test module (`demo_engine`)."""
    return demo_engine(tmp_path_factory.mktemp("engine"))


def small_request(prompt: str, **kw: Any) -> Any:
    """A 64x64 `Txt2ImgRequest` for the demo model: 3 steps and seed 11 unless `kw` says otherwise."""
    from loraprompt.ui.txt2img import Txt2ImgRequest

    return Txt2ImgRequest(prompt, **{"steps": 3, "seed": 11, "width": 64, "height": 64, **kw})


class WebUI(ServerProcess):
    """`python -m loraprompt webui [extra args]` on a free loopback port with its own data dir."""

    what = "webui"

    def __init__(self, data_dir: Path, *extra: str, timeout: float = 120.0) -> None:
        super().__init__(data_dir / "webui.log")
        self.data_dir = data_dir
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
        cmd = [sys.executable, "-m", "loraprompt", "webui", "--data-dir", str(data_dir), "--port", str(self.port), *extra]
        self.start(cmd, "", timeout=timeout, pause=0.5, env=env)


@pytest.fixture(scope="module", params=gradio_pythons())
def demo(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoServer]:
    """The demo app (loaded model: SDXL) over a fresh fixture folder, once per gradio version."""
    base = tmp_path_factory.mktemp("gallery")
    with DemoServer(request.param, make_gallery_folder(base), base / "cache", family="sdxl") as server:
        yield server


@contextmanager
def open_page(browser: Any, url: str, ready: str, shot: str, *, viewport: tuple[int, int] = (1280, 900),
              full_page: bool = True, routes: dict[str, Any] | None = None) -> Iterator[Any]:
    """A new page at `url` once the selector `ready` is in it, its dialogs dismissed and their
    messages kept in `page.dialogs`; afterwards a screenshot to SCREENSHOTS/`shot`. `routes`: URL
    pattern -> Playwright route handler, set before the page loads (to make a request fail)."""
    context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
    for pattern, handler in (routes or {}).items():
        context.route(pattern, handler)
    pg = context.new_page()
    pg.dialogs = []
    pg.on("dialog", lambda d: (pg.dialogs.append(d.message), d.dismiss()))
    pg.goto(url)
    pg.locator(ready).first.wait_for(timeout=30_000)
    if ready == "#lp-prompt textarea":  # the web UI: its load script opens img2img once and comes back;
        # text typed into the prompt meanwhile was lost once in CI (a busy machine), so wait it out
        pg.locator("#lp-i2i-prompt textarea").wait_for(state="attached", timeout=30_000)
        pg.locator(ready).first.wait_for(state="visible", timeout=30_000)
    yield pg
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(SCREENSHOTS / shot), full_page=full_page)
    context.close()


@pytest.fixture
def page(browser: Any, demo: DemoServer, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A page with the demo loaded and the first cards drawn; a screenshot is saved afterwards."""
    with open_page(browser, demo.url, ".lp-card", f"{request.node.name.replace('/', '_')}.png") as pg:
        yield pg
