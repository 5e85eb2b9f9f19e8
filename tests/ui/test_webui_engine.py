"""The web UI's txt2img engine and its gradio app without a browser: LoRAs from the prompt are
patched for one generation and gone the next, images are saved with A1111 infotext, pasted
infotext fills the fields."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import loraprompt
from loraprompt.infotext import parse_infotext, parse_lora_hashes
from loraprompt.library.hashes import file_hashes
from loraprompt.models.samplers import SAMPLER_LABELS, sampler_by_label
from loraprompt.ui.txt2img import Txt2Img, save_png
from loraprompt.ui.webui import build_app, format_diagnostics, paste_values, png_infotext

from .conftest import small_request

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"


_request = small_request


def test_lora_applies_for_one_generation_and_is_gone_the_next(engine: Txt2Img) -> None:
    plain = engine.generate(_request("a cat"))
    steps: list[tuple[int, int]] = []
    with_lora = engine.generate(_request("a cat <lora:demo_sketch:0.9:0.6>"), on_step=lambda i, n: steps.append((i, n)))
    again = engine.generate(_request("a cat"))

    assert steps == [(1, 3), (2, 3), (3, 3)]
    base, lora, back = (np.asarray(r.image, dtype=np.float32) for r in (plain, with_lora, again))
    assert np.abs(lora - base).mean() > 1.0  # the LoRA visibly changes the picture
    assert np.array_equal(back, base)  # and removing it from the prompt restores the model exactly
    assert [(a.name, a.te, a.unet) for a in with_lora.applied] == [("demo_sketch", 0.9, 0.6)]
    assert with_lora.diagnostics == []


def test_png_carries_a1111_infotext_with_lora_hashes(engine: Txt2Img) -> None:
    result = engine.generate(_request("sunset <lora:demo_warm:0.5>, <lora:demo_neon:1>", negative_prompt="blurry",
                                      sampler="DPM++ 2M Karras", cfg_scale=5.5, seed=123))
    lora_dir = Path(engine.library.roots[0])
    expected = {"demo_warm": file_hashes(lora_dir / "demo_warm.safetensors")["a1111_short"],
                "demo_neon": file_hashes(lora_dir / "styles" / "demo_neon.safetensors")["a1111_short"]}
    with Image.open(result.path) as png:
        text = png.text["parameters"]
    assert text == result.infotext
    assert png_infotext(str(result.path)) == text
    fields = parse_infotext(text)
    assert fields["Prompt"] == "sunset <lora:demo_warm:0.5>, <lora:demo_neon:1>"
    assert fields["Negative prompt"] == "blurry"
    assert (fields["Sampler"], fields["Schedule type"], fields["CFG scale"]) == ("DPM++ 2M", "Karras", "5.5")
    assert (fields["Seed"], fields["Size-1"], fields["Size-2"], fields["Model"]) == ("123", "64", "64", "loraprompt-demo")
    assert parse_lora_hashes(fields["Lora hashes"]) == expected
    assert result.path.parent.parent == engine.outputs_dir / "txt2img-images"


def test_unknown_lora_is_a_diagnostic_not_a_failure(engine: Txt2Img) -> None:
    result = engine.generate(_request("a dog <lora:nope:1> <lora:demo_warm:1>"))
    assert [a.name for a in result.applied] == ["demo_warm"]
    assert any(d.subject == "nope" and d.severity == "error" for d in result.diagnostics)
    panel = format_diagnostics(result.diagnostics, result.applied)
    assert "**applied** `demo_warm`" in panel and "`nope`" in panel
    assert "Lora hashes" in result.infotext and "nope" not in parse_infotext(result.infotext)["Lora hashes"]


def test_a_lora_tag_in_the_negative_prompt_is_text_and_says_so(engine: Txt2Img) -> None:
    """As in A1111 the negative prompt's tags are encoded as text and apply nothing; the web UI said
    nothing, so a LoRA put there by mistake looked applied."""
    result = engine.generate(_request("a dog", negative_prompt="blurry, <lora:demo_warm:1>"))
    assert result.applied == []
    notes = [d for d in result.diagnostics if d.code == "tag-in-negative"]
    assert len(notes) == 1 and notes[0].severity == "warning" and "<lora:demo_warm:1>" in notes[0].message
    assert "negative prompt" in format_diagnostics(result.diagnostics, result.applied)
    assert parse_infotext(result.infotext)["Negative prompt"] == "blurry, <lora:demo_warm:1>"  # kept as written
    assert not [d for d in engine.generate(_request("a dog", negative_prompt="blurry <3")).diagnostics
                if d.code == "tag-in-negative"]


def test_clip_skip_is_written_only_when_not_one(engine: Txt2Img) -> None:
    one = engine.generate(_request("a bird", steps=1))
    two = engine.generate(_request("a bird", steps=1, clip_skip=2))
    assert "Clip skip" not in parse_infotext(one.infotext)
    assert parse_infotext(two.infotext)["Clip skip"] == "2"
    assert not np.array_equal(np.asarray(one.image), np.asarray(two.image))
    # deeper than the text encoder's 2 layers (its bare embeddings): refused by name, as the APIs do
    with pytest.raises(ValueError, match=r"clip skip 3 is deeper than the 2 layers of text_encoder allow: set 1 to 2"):
        engine.generate(_request("a bird", steps=1, clip_skip=3))


def test_and_is_composed_not_refused(engine: Txt2Img) -> None:
    result = engine.generate(_request("a cat AND a dog", steps=1))
    assert result.diagnostics == []  # composable diffusion runs (tests/ui/test_webui_generation.py)
    plain = engine.generate(_request("a cat ANDROID", steps=1))
    assert plain.diagnostics == [] and not np.array_equal(np.asarray(plain.image), np.asarray(result.image))


def test_random_seed_is_recorded(engine: Txt2Img) -> None:
    result = engine.generate(_request("a fish", seed=-1, steps=1))
    assert 0 <= result.seed < 2**32
    assert parse_infotext(result.infotext)["Seed"] == str(result.seed)


def test_png_infotext_of_other_files_is_empty(tmp_path: Path) -> None:
    Image.new("RGB", (4, 4)).save(tmp_path / "plain.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    assert png_infotext(str(tmp_path / "plain.png")) == ""
    assert png_infotext(str(tmp_path / "broken.png")) == ""
    assert png_infotext(None) == ""


def test_save_png_numbers_files_like_a1111(tmp_path: Path) -> None:
    image = Image.new("RGB", (8, 8))
    first = save_png(image, "p\nSteps: 1, Seed: 5, Size: 8x8", tmp_path, 5)
    second = save_png(image, "q\nSteps: 1, Seed: 5, Size: 8x8", tmp_path, 5)
    assert (first.name, second.name) == ("00000-5.png", "00001-5.png")
    with Image.open(second) as png:
        assert png.text["parameters"].startswith("q\n")


def test_every_listed_sampler_generates(engine: Txt2Img) -> None:
    images = {}
    for label in SAMPLER_LABELS:
        result = engine.generate(_request("a tree", sampler=label, steps=2))
        images[label] = np.asarray(result.image)
        assert parse_infotext(result.infotext)["Sampler"] == sampler_by_label(label).name
    assert not np.array_equal(images["Euler"], images["DDIM"])  # the choice reaches the pipeline
    with pytest.raises(ValueError, match="unknown sampler"):
        sampler_by_label("Euler z")


def _hashed(engine: Txt2Img, stem: str) -> str:
    """The A1111 short hash of a demo LoRA, made known to the library (as the gallery's background
    hashing or a generation with it does): a paste only uses hashes already known."""
    entry = next(e for e in engine.library.entries if e.name == stem)
    return str(engine.library.hashes(entry)["a1111_short"])


def test_paste_values_fill_fields_and_remap_by_hash(engine: Txt2Img) -> None:
    short = _hashed(engine, "demo_warm")
    text = (f"a <lora:renamed:0.4>\nNegative prompt: ugly\nSteps: 9, Sampler: Euler, CFG scale: 6, Seed: 4, "
            f'Size: 128x96, Clip skip: 2, Lora hashes: "renamed: {short}"')
    prompt, negative, sampler, steps, width, height, cfg, seed, clip_skip = paste_values(text, engine.library)
    assert (prompt, negative, sampler) == ("a <lora:demo_warm:0.4>", "ugly", "Euler")
    assert (steps, width, height, cfg, seed, clip_skip) == (9.0, 128.0, 96.0, 6.0, 4.0, 2.0)
    assert paste_values("x\nSteps: 1, Seed: 2, Size: 8x8", engine.library)[-1] == 1  # absent means 1
    # float() reads "nan" and "inf": such fields are left as they are, like unreadable ones
    _, _, _, steps, _, _, cfg, seed, _ = paste_values("x\nSteps: nan, CFG scale: inf, Seed: -Infinity", engine.library)
    assert all(isinstance(v, dict) and v.get("__type__") == "update" and "value" not in v for v in (steps, cfg, seed))


def test_pasted_additional_networks_fields_become_tags(engine: Txt2Img) -> None:
    """An older image made with kohya's Additional Networks extension names its LoRAs in `AddNet
    Model 1: name(hash)` fields, not tags: the paste adds them as tags (A1111's built-in does,
    networks.infotext_pasted), under the local name of that hash, keeping the text-encoder weight
    (`Weight B`) where it differs from the UNet's (`Weight A`); a LyCORIS module is left out, as there."""
    short = _hashed(engine, "demo_warm")
    text = (f"a cat\nSteps: 9, Seed: 4, Size: 64x64, AddNet Enabled: True, AddNet Module 1: LoRA, AddNet Model 1: "
            f"warm_v1({short}), AddNet Weight A 1: 0.8, AddNet Weight B 1: 0.5, AddNet Module 2: LoRA, AddNet Model 2: "
            "gone(0123456789ab), AddNet Weight A 2: 0.6, AddNet Weight B 2: 0.6, AddNet Module 3: LyCORIS, "
            "AddNet Model 3: x(abcdef012345), AddNet Weight A 3: nan")
    prompt = paste_values(text, engine.library)[0]
    assert prompt == "a cat\n<lora:demo_warm:0.5:0.8><lora:gone:0.6>"
    assert [(a.name, a.te, a.unet) for a in loraprompt.parse(prompt).loras] == [("demo_warm", 0.5, 0.8), ("gone", 0.6, 0.6)]


def test_a_paste_never_hashes_the_library(tmp_path: Path) -> None:
    """Pasting someone else's infotext, whose LoRA hashes this library does not know, read and hashed
    every file of the library in the paste handler (minutes on a large one, the page waiting). It
    now uses the hashes already known, as A1111 and /sdapi/v1/png-info do."""
    import loraprompt
    from loraprompt.models import load_demo

    _, lora_dir = load_demo(tmp_path)
    library = loraprompt.Library([str(lora_dir)], cache_dir=str(tmp_path / "cache"))
    text = 'a <lora:theirs:0.4> <lora:renamed:1>\nSteps: 9, Seed: 4, Size: 64x64, Lora hashes: "theirs: 0123456789ab, renamed: abcdef012345"'
    assert paste_values(text, library)[0] == "a <lora:theirs:0.4> <lora:renamed:1>"  # names kept
    assert all(library.hashes(entry, compute=False) == {} for entry in library.entries)  # nothing read

def test_app_builds_with_demo_notice_and_gallery(engine: Txt2Img) -> None:
    blocks, gallery = build_app(engine)
    config = blocks.get_config_file()
    ids = {c.get("props", {}).get("elem_id") for c in config["components"]}
    assert {"lp-prompt", "lp-generate", "lp-image", "lp-infotext", "lp-demo-notice", "lp-gallery"} <= ids
    assert gallery.service is not None
    # img2img is a tab of its own with the same form (its elem_ids prefixed), not part of txt2img's
    assert {"lp-img2img-tab", "lp-i2i-prompt", "lp-i2i-generate", "lp-i2i-init-image", "lp-i2i-resize-mode",
            "lp-i2i-denoising", "lp-i2i-sampler", "lp-i2i-seed", "lp-i2i-image", "lp-send-to-img2img"} <= ids
    assert not {"lp-init-image", "lp-img2img-box"} & ids
    endpoints = {d.get("api_name") for d in config["dependencies"]}
    assert {"generate", "img2img", "run", "xy_grid"} <= endpoints


def _xy_handlers(blocks: Any) -> dict[str, Any]:
    """The handlers that fill the X/Y grid's LoRA dropdowns, by their trigger (load, expand)."""
    config = blocks.get_config_file()
    ids = {c["id"]: c.get("props", {}).get("elem_id") for c in config["components"]}
    return {trigger: blocks.fns[d["id"]].fn for d in config["dependencies"]
            if [ids.get(o) for o in d["outputs"]] == ["lp-xy-lora", "lp-xy-lora2"] for _, trigger in d["targets"]}


def test_xy_dropdowns_follow_the_library_and_default_to_two_loras(engine: Txt2Img, tmp_path: Path) -> None:
    import shutil

    lora_dir = tmp_path / "Lora"
    shutil.copytree(engine.library.roots[0], lora_dir)
    library = loraprompt.Library([str(lora_dir)], cache_dir=str(tmp_path / "cache"), auto_check_s=0)
    blocks, _ = build_app(Txt2Img(engine.model, library, tmp_path / "outputs"))
    props = {c["props"]["elem_id"]: c["props"] for c in blocks.get_config_file()["components"]
             if c.get("props", {}).get("elem_id") in ("lp-xy-lora", "lp-xy-lora2")}
    first, second = props["lp-xy-lora"]["value"], props["lp-xy-lora2"]["value"]
    assert first and second and first != second  # the same LoRA on both axes draws identical rows
    handlers = _xy_handlers(blocks)
    assert set(handlers) == {"load", "expand"}  # a page load and opening the accordion both refresh
    shutil.copy(lora_dir / "demo_warm.safetensors", lora_dir / "added_later.safetensors")
    for fn in handlers.values():
        rows, columns = fn("demo_warm", "")
        assert "added_later" in [c[0] if isinstance(c, (list, tuple)) else c for c in rows["choices"]]
        assert rows["choices"] == columns["choices"]
        # a set axis gets no value: a LoRA picked while the refresh runs stays (CI saw the grid of the
        # default LoRA when the expand's answer came after the test's pick)
        assert "value" not in rows and columns["value"] not in ("", None, "demo_warm")
    # a file that cannot be loaded is not offered: picking it drew a grid where it was never applied
    (lora_dir / "cut_short.safetensors").write_bytes((lora_dir / "demo_warm.safetensors").read_bytes()[:100])
    past = time.time() - 60
    os.utime(lora_dir / "cut_short.safetensors", (past, past))  # settled, so listed as broken, not pending
    rows, _ = handlers["load"]("demo_warm", "")
    assert any(e.name == "cut_short" and e.error for e in library.entries)
    assert "cut_short" not in [c[0] if isinstance(c, (list, tuple)) else c for c in rows["choices"]]
    assert "added_later" in [c[0] if isinstance(c, (list, tuple)) else c for c in rows["choices"]]


def test_cli_refuses_missing_lora_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from loraprompt.ui import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser, "webui")
    args = parser.parse_args(["--data-dir", str(tmp_path), "--lora-dir", str(tmp_path / "nope")])
    assert args.host == "127.0.0.1"  # loopback unless asked
    assert cli.run(args) == 2
    assert "is not a folder" in capsys.readouterr().err


def _uses(engine: Txt2Img) -> dict[str, tuple[int, int]]:
    return {e.name: engine.library.usage(e) for e in engine.library.entries}


def test_each_applied_lora_is_counted_once_per_generation(engine: Txt2Img) -> None:
    before = _uses(engine)
    engine.generate(_request("a cat <lora:demo_warm:0.5> <lora:demo_warm:0.5> <lora:demo_neon:1:unet_sched=0@0,1@1>"))
    middle = _uses(engine)
    engine.generate(_request("a cat <lora:demo_neon:1> <lora:missing:1>"))
    engine.generate(_request("a plain cat"))
    after = _uses(engine)

    assert middle["demo_warm"][0] == before["demo_warm"][0] + 1  # named twice, one generation
    assert middle["demo_neon"][0] == before["demo_neon"][0] + 1  # scheduled strengths count too
    assert middle["demo_warm"][1] > before["demo_warm"][1]
    assert after["demo_neon"][0] == before["demo_neon"][0] + 2
    assert after["demo_neon"][1] > middle["demo_neon"][1]
    assert after["demo_warm"] == middle["demo_warm"]
    unused = set(after) - {"demo_warm", "demo_neon"}
    assert unused and all(after[n] == before[n] for n in unused)


def test_diagnostics_panel_shows_prompt_text_literally_in_markdown() -> None:
    from markdown_it import MarkdownIt  # a CommonMark renderer, as gr.Markdown's

    prompt = "<lora:my_*lora*_x:abc> <lora:a`b:1e400>"
    parsed = loraprompt.syntax.parse(prompt)
    assert parsed.diagnostics
    html = MarkdownIt().render(format_diagnostics(list(parsed.diagnostics), []))
    assert "<a " not in html and "<em>" not in html  # no autolink, no emphasis from the user's text
    assert "&lt;lora:my_*lora*_x:abc&gt;" in html
    assert "&lt;lora:a`b:1e400&gt;" in html


@pytest.mark.parametrize(("name", "shown"), [("plain", "`plain`"), ("a`b", "`` a`b ``"), ("x``y", "``` x``y ```")])
def test_code_spans_survive_backticks_in_names(name: str, shown: str) -> None:
    from loraprompt.ui.webui import _code

    assert _code(name) == shown


def test_an_empty_negative_prompt_with_a_te_lora_gives_an_image(engine: Txt2Img) -> None:
    """Found by a user review: the demo's text encoder with demo_neon's TE LoRA gives the empty
    negative prompt hidden states of mean exactly 0, and the emphasis rescale (mean kept, as A1111
    does) divided by it: NaN everywhere, an all-black image, no word. Without emphasis weights the
    rescale is skipped (it is exactly 1 then), and a zero mean keeps the weighted states."""
    result = engine.generate(_request("a cat <lora:demo_neon:1>", seed=1), save=False)
    assert np.asarray(result.image).max() > 0 and result.diagnostics == []
    emphasised = engine.generate(_request("a (cat:1.3) <lora:demo_neon:1>", negative_prompt="(:1.2)", seed=1), save=False)
    assert np.asarray(emphasised.image).max() > 0 and not [d for d in emphasised.diagnostics if d.code == "W-NAN"]


def test_non_finite_latents_are_reported_with_their_step(engine: Txt2Img) -> None:
    result = engine.generate(_request("a cat <lora:demo_neon:1e+30>", seed=1), save=False)
    nan = [d for d in result.diagnostics if d.code == "W-NAN"]
    assert len(nan) == 1 and nan[0].data == {"step": 1} and "step 1 of 3" in nan[0].message
    assert np.asarray(result.image).max() == 0  # what the user would have seen without the message


def test_the_page_shows_an_interrupted_image_and_grid_cell_it_did_not_save(engine: Txt2Img, tmp_path: Path) -> None:
    """The Generate and X/Y grid handlers hand gradio an image that was not saved (interrupted, as in
    A1111) itself, never its missing path as the file name "None"."""
    eng = Txt2Img(engine.model, engine.library, tmp_path / "outputs")
    blocks, _ = build_app(eng)
    config = blocks.get_config_file()
    values = {c["id"]: c.get("props", {}).get("value") for c in config["components"]}
    elem = {c["id"]: c.get("props", {}).get("elem_id") for c in config["components"]}

    def progress(value: Any, desc: str | None = None, **_: Any) -> None:
        if desc and desc.startswith("Sampling"):
            eng.interrupt()  # after the first step

    for api in ("generate", "xy_grid"):
        dep = next(d for d in config["dependencies"] if d.get("api_name") == api)
        inputs = [values[i] for i in dep["inputs"]]
        named = {elem[i]: n for n, i in enumerate(dep["inputs"])}
        inputs[named["lp-prompt"]], inputs[named["lp-steps"]] = "a cat", 4
        inputs[named["lp-width"]] = inputs[named["lp-height"]] = 64
        inputs[-1] = ""  # no task id, as an API call
        image, gallery, _infotext, saved, panel = blocks.fns[dep["id"]].fn(*inputs, progress=progress)
        cells = gallery["value"] if api == "xy_grid" else [image]
        assert cells and all(not isinstance(v, str) or Path(v).is_file() for v in cells), (api, cells)
        assert "not saved" in panel and "None" not in saved, (api, panel, saved)
