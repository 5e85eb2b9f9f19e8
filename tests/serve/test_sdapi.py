"""The A1111 API driven by the real `webuiapi` client against a started server: txt2img with a
`<lora:…>` tag (infotext with `Lora hashes`, in `info` and in the PNG), the LoRA list and its
refresh, samplers, models, options, progress, interrupt; bad input answered 422 naming the field."""

from __future__ import annotations

import base64
import datetime
import io
import json
import os
import shutil
from typing import Any

import numpy as np
import pytest
import requests
import webuiapi
from PIL import Image

from loraprompt.infotext import parse_infotext, parse_lora_hashes
from loraprompt.library.hashes import file_hashes
from loraprompt.models.samplers import sampler_by_label
from tests.serve.conftest import SMALL, Served


def client(served: Served, **kw: Any) -> webuiapi.WebUIApi:
    return webuiapi.WebUIApi(host="127.0.0.1", port=served.port, **kw)


def test_webuiapi_txt2img_with_a_lora_tag_returns_infotext_with_lora_hashes(served: Served) -> None:
    api = client(served, sampler="DPM++ 2M", steps=3)
    result = api.txt2img(prompt="a cat <lora:demo_warm:0.8>", negative_prompt="blurry", seed=42, width=64, height=64,
                         cfg_scale=5)
    expected = file_hashes(served.lora_dir / "demo_warm.safetensors")["a1111_short"]

    assert len(result.images) == 1 and result.images[0].size == (64, 64)
    infotext = result.info["infotexts"][0]
    fields = parse_infotext(infotext)
    assert parse_lora_hashes(fields["Lora hashes"]) == {"demo_warm": expected}
    assert fields["Seed"] == "42" and fields["Sampler"] == "DPM++ 2M" and fields["Schedule type"] == "Karras"
    assert fields["Negative prompt"] == "blurry" and fields["Steps"] == "3"
    assert result.info["extra_generation_params"]["Lora hashes"] == fields["Lora hashes"]
    assert result.info["all_seeds"] == [42] and result.info["sd_model_name"] == "loraprompt-demo"
    assert result.images[0].info["parameters"] == infotext  # the PNG carries it too, as A1111's API does
    assert result.info["loras"][0][0]["name"] == "demo_warm" and result.info["loras"][0][0]["unet"] == 0.8
    assert result.parameters["prompt"] == "a cat <lora:demo_warm:0.8>"
    assert not list((served.root / "outputs").rglob("*.png"))  # save_images=False: nothing kept


def test_images_are_written_only_with_save_images_and_the_kept_file_is_what_was_sent(served: Served) -> None:
    """save_images=False (the default) encodes the images in memory: no file is written (and
    deleted) in the outputs folder. save_images=True keeps the PNG, byte for byte what was sent."""
    folder = served.root / "outputs" / "txt2img-images" / datetime.date.today().isoformat()
    folder.mkdir(parents=True, exist_ok=True)
    os.utime(folder, ns=(10**18, 10**18))  # a file made and removed there would set it to now
    before = set(folder.iterdir())

    def png(**body: Any) -> bytes:
        response = requests.post(f"{served.url}/sdapi/v1/txt2img",
                                 json={"prompt": "a cat <lora:demo_warm:0.5>", "seed": 5, **SMALL, **body}, timeout=300)
        assert response.status_code == 200, response.text
        return base64.b64decode(response.json()["images"][0])

    sent = png()
    assert folder.stat().st_mtime_ns == 10**18 and set(folder.iterdir()) == before
    kept = png(save_images=True)
    (written,) = set(folder.iterdir()) - before
    assert written.name.endswith("-5.png") and written.read_bytes() == kept
    assert kept == sent  # the same image and infotext, whichever way it was encoded
    with Image.open(io.BytesIO(sent)) as image:
        assert parse_infotext(image.text["parameters"])["Seed"] == "5"


def test_webuiapi_batch_gets_a1111_seeds_and_the_lora_changes_the_image(served: Served) -> None:
    api = client(served, sampler="Euler", steps=3)
    with_lora = api.txt2img(prompt="a cat <lora:demo_sketch:1>", seed=7, batch_size=2, n_iter=2, width=64, height=64)
    plain = api.txt2img(prompt="a cat", seed=7, width=64, height=64)

    assert with_lora.info["all_seeds"] == [7, 8, 9, 10] and len(with_lora.images) == 4
    a = np.asarray(with_lora.images[0].convert("RGB"), dtype=np.float32)
    b = np.asarray(plain.images[0].convert("RGB"), dtype=np.float32)
    assert a.std() > 1.0 and b.std() > 1.0  # real pictures, not a blank
    assert np.abs(a - b).mean() > 1.0  # the LoRA changes the same seed's image
    assert "Lora hashes" not in plain.info["infotexts"][0]


def test_seeds_past_32_bits_are_used_as_given(served: Served) -> None:
    """A1111 does not wrap seeds (processing.py:904): all_seeds for seed 2**32 were [0, 1]."""
    r = requests.post(f"{served.url}/sdapi/v1/txt2img", timeout=120, json={
        "prompt": "a cat", "seed": 2**32, "batch_size": 2, "steps": 2, "width": 64, "height": 64})
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["all_seeds"] == [2**32, 2**32 + 1] and "Seed: 4294967296," in info["infotexts"][0]


def test_webuiapi_lists_and_refreshes_loras(served: Served) -> None:
    api = client(served)
    names = {lora["name"]: lora for lora in api.get_loras()}
    assert set(names) == {"demo_warm", "demo_sketch", "demo_neon"}
    assert names["demo_neon"]["path"] == str(served.lora_dir / "styles" / "demo_neon.safetensors")
    assert names["demo_warm"]["metadata"]["ss_network_dim"] == "4"
    assert names["demo_warm"]["metadata"]["ss_tag_frequency"] == {"demo": {"warm": 10, "orange": 9}}  # JSON decoded

    copy = served.lora_dir / "fresh_copy.safetensors"
    shutil.copy(served.lora_dir / "demo_warm.safetensors", copy)
    try:
        assert requests.post(f"{served.url}/sdapi/v1/refresh-loras", timeout=30).status_code == 200
        assert "fresh_copy" in {lora["name"] for lora in api.get_loras()}
    finally:
        copy.unlink()
        served.service.library.base.refresh()


def test_webuiapi_samplers_models_options_progress_interrupt(served: Served) -> None:
    api = client(served)
    samplers = {s["name"]: s for s in api.get_samplers()}
    assert {"Euler a", "Euler", "DPM++ 2M", "DDIM"} <= set(samplers)
    assert samplers["DPM++ 2M"]["options"] == {"scheduler": "karras"}
    assert "automatic" in api.util_get_scheduler_names()
    models = api.get_sd_models()
    assert models[0]["model_name"] == "loraprompt-demo"
    assert api.get_options()["sd_model_checkpoint"] == models[0]["title"]
    assert api.util_get_current_model() == models[0]["title"]
    progress = api.get_progress()
    assert progress["state"]["job_count"] == 0 and progress["progress"] == 0.0
    assert api.interrupt() is None  # nothing running: a no-op, as in A1111


def test_the_api_interrupt_and_skip_reach_a_generation_started_in_the_web_ui(served: Served) -> None:
    """A1111's /sdapi/v1/interrupt stops whatever runs (shared.state.interrupt()); loraprompt's
    stopped only the API's own jobs, so a script could not stop a generation started in the page
    (the web UI calls the same engine directly, outside the API's queue)."""
    from loraprompt.ui.txt2img import Txt2ImgRequest

    sent: list[int] = []

    def on_step(step: int, total: int) -> None:
        if step == 2 and not sent:
            sent.append(requests.post(f"{served.url}/sdapi/v1/interrupt", timeout=30).status_code)

    result = served.engine.generate(Txt2ImgRequest("a cat", steps=12, width=64, height=64, seed=3), on_step=on_step,
                                    save=False)
    assert sent == [200]
    assert [d.code for d in result.diagnostics if d.code == "I-INTERRUPTED"] == ["I-INTERRUPTED"]
    after = served.engine.generate(Txt2ImgRequest("a cat", steps=3, width=64, height=64, seed=3), save=False)
    assert not [d for d in after.diagnostics if d.code == "I-INTERRUPTED"]  # the next generation runs whole

    skipped: list[int] = []  # and /sdapi/v1/skip skips the batch the page's generation samples

    def skip_at_two(step: int, total: int) -> None:
        if step == 2 and not skipped:
            skipped.append(requests.post(f"{served.url}/sdapi/v1/skip", timeout=30).status_code)

    batches = served.engine.generate(Txt2ImgRequest("a cat", steps=4, width=64, height=64, seed=3, batch_count=2),
                                     on_step=skip_at_two, save=False)
    assert skipped == [200] and len(batches.images) == 2
    assert [(d.code, d.data) for d in batches.diagnostics] == [("I-SKIPPED", {"batch": 1})]


def test_unused_a1111_fields_are_accepted_and_named(served: Served) -> None:
    api = client(served, steps=3)
    result = api.txt2img(prompt="a cat", seed=1, width=64, height=64, tiling=True, restore_faces=True,
                         styles=["my style"], override_settings={"sd_vae": "x.vae.pt", "CLIP_stop_at_last_layers": 2})
    warnings = "\n".join(result.info["warnings"])
    for name in ("tiling", "restore_faces", "styles", "override_settings.sd_vae"):
        assert name in warnings
    assert "hr_scale" not in warnings and "eta" not in warnings  # webuiapi's defaults: inert, not reported
    assert result.info["clip_skip"] == 2 and "Clip skip: 2" in result.info["infotexts"][0]


def _post(served: Served, body: Any, path: str = "/sdapi/v1/txt2img", **kw: Any) -> requests.Response:
    if isinstance(body, (str, bytes)):
        return requests.post(served.url + path, data=body, headers={"Content-Type": "application/json"}, timeout=60, **kw)
    return requests.post(served.url + path, json=body, timeout=60, **kw)


@pytest.mark.parametrize(("body", "field", "words"), [
    ({"prompt": "x", "steps": "many"}, "steps", "integer"),
    ({"prompt": "x", "cfg_scale": [1]}, "cfg_scale", "number"),
    ({"prompt": 3}, "prompt", ""),
    ({"prompt": "x", **SMALL, "width": 70}, "width", "multiple of 8"),
    ({"prompt": "x", **SMALL, "steps": 61}, "steps", "--max-steps"),
    ({"prompt": "x", **SMALL, "height": 1024}, "height", "--max-size"),
    ({"prompt": "x", **SMALL, "batch_size": 3, "n_iter": 3}, "batch_size", "--max-images"),
    ({"prompt": ["a", "b"], **SMALL, "batch_size": 3}, "prompt", "2 prompts for 3 images"),
    ({"prompt": "x", **SMALL, "override_settings": {"CLIP_stop_at_last_layers": 99}}, "CLIP_stop_at_last_layers", "1 to 2 "),
])
def test_bad_input_is_422_naming_the_field(served: Served, body: dict[str, Any], field: str, words: str) -> None:
    response = _post(served, body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert field in detail[0]["loc"], detail
    assert words in detail[0]["msg"]


def test_unknown_sampler_is_422_listing_the_choices(served: Served) -> None:
    response = _post(served, {"prompt": "x", **SMALL, "sampler_name": "DPM adaptive"})
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", "sampler_name"]
    assert "Euler a" in detail["msg"] and "DPM++ 2M Karras" in detail["msg"]
    assert "Euler a" in detail["ctx"]["choices"]
    response = _post(served, {"prompt": "x", **SMALL, "sampler_name": "Euler", "scheduler": "polyexponential"})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "scheduler"]


@pytest.mark.parametrize("raw", ['{"prompt": "x",', "[1, 2]", "null", '{"prompt": "x"} trailing', "\xff",
                                 '{"prompt": "x", "cfg_scale": NaN}', '{"prompt": "x", "cfg_scale": Infinity}'])
def test_malformed_json_is_422_and_the_server_goes_on(served: Served, raw: str) -> None:
    response = _post(served, raw.encode("latin-1"))
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][0] == "body"
    assert requests.get(served.url + "/sdapi/v1/samplers", timeout=10).status_code == 200


def test_send_images_false_and_a_tag_for_a_missing_lora_are_not_errors(served: Served) -> None:
    response = _post(served, {"prompt": "a cat <lora:no_such_lora:1>", **SMALL, "seed": 3, "send_images": False})
    assert response.status_code == 200
    body = response.json()
    info = json.loads(body["info"])
    assert body["images"] == [] and len(info["infotexts"]) == 1
    assert any("no_such_lora" in w for w in info["warnings"])  # A1111 draws without it; we also say why


def test_png_in_the_response_decodes_as_webuiapi_expects(served: Served) -> None:
    body = _post(served, {"prompt": "x", **SMALL, "seed": 9}).json()
    image = Image.open(io.BytesIO(base64.b64decode(body["images"][0])))
    assert image.format == "PNG" and image.info["parameters"] == json.loads(body["info"])["infotexts"][0]


def test_progress_and_interrupt_of_a_running_batch(served: Served) -> None:
    import threading
    import time

    api = client(served, sampler="Euler", steps=60)
    result: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: result.update(r=api.txt2img(
        prompt="a cat <lora:demo_sketch:0.5>", seed=5, batch_size=4, width=128, height=128)))
    worker.start()
    deadline = time.monotonic() + 60
    while (progress := api.get_progress())["state"]["sampling_step"] < 2:
        assert time.monotonic() < deadline and worker.is_alive()
        time.sleep(0.05)
    assert progress["state"]["job_count"] >= 1 and progress["state"]["sampling_steps"] == 60
    assert 0 < progress["progress"] < 1
    api.interrupt()
    worker.join(60)
    interrupted = result["r"]
    assert interrupted.info["interrupted"] is True
    assert 1 <= len(interrupted.images) < 4  # A1111 keeps what was made, the current image included
    assert "Steps: 60" in interrupted.info["infotexts"][0]
    assert served.is_pristine()  # an interrupted request leaves no LoRA behind
    assert api.get_progress()["state"]["job_count"] == 0


@pytest.mark.parametrize(("name", "scheduler", "label"), [
    ("DPM++ 2M", None, "DPM++ 2M Karras"),  # A1111 v1.10.1's default schedule for DPM++ 2M is Karras
    ("DPM++ 2M", "uniform", "DPM++ 2M"),
    ("LMS", None, "LMS"),  # ...but LMS, Euler and Heun keep the model's own schedule
    ("LMS", "automatic", "LMS"),
    ("LMS", "karras", "LMS Karras"),
    ("Euler", "automatic", "Euler"),
    ("DPM++ 2M SDE", "automatic", "DPM++ 2M SDE Exponential"),  # A1111 1.10's default for it
    ("DPM++ 2M SDE", "karras", "DPM++ 2M SDE Karras"),
    # A1111 runs any pair: the ones the web UI does not list run too (not Euler a's or DDIM's: below)
    ("DPM++ 2M SDE", "uniform", "DPM++ 2M SDE"),
    ("Euler", "karras", "Euler Karras"),
    ("Heun", "beta", "Heun Beta"),
    ("UniPC", "exponential", "UniPC Exponential"),
    ("DPM++ 2M Karras", "uniform", "DPM++ 2M Karras"),  # an old combined name says its schedule itself
])
def test_automatic_scheduler_is_the_samplers_own_default(name: str, scheduler: str | None, label: str) -> None:
    from loraprompt.serve.service import sampler_label

    assert sampler_label(name, scheduler) == label


def test_a_schedule_a_sampler_lacks_is_422_listing_what_it_has() -> None:
    # diffusers' Euler a and DDIM take no sigma schedule (A1111's k-diffusion Euler a does)
    from loraprompt.serve.errors import ServeError
    from loraprompt.serve.service import sampler_label, schedulers_of

    with pytest.raises(ServeError) as caught:
        sampler_label("Euler a", "karras")
    error = caught.value
    assert error.status == 422 and error.field == ("scheduler",) and error.ctx["choices"] == ["automatic", "uniform"]
    assert schedulers_of() == ["automatic", "uniform", "karras", "exponential", "beta"]


def test_a_sampler_on_a_schedule_the_web_ui_does_not_list_runs_it(served: Served) -> None:
    """SillyTavern and other clients pick a sampler and a schedule type from two lists, as A1111 1.9+
    has them; "Euler" + "Karras" was a 422 because the web UI's list has no "Euler Karras"."""
    body = {"prompt": "a cat", "seed": 5, **SMALL, "sampler_name": "Euler", "scheduler": "karras"}
    response = requests.post(f"{served.url}/sdapi/v1/txt2img", json=body, timeout=120)
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert (info["sampler_name"], info["scheduler"]) == ("Euler", "karras")
    assert "Sampler: Euler, Schedule type: Karras" in info["infotexts"][0]
    sampler = sampler_by_label("Euler Karras")  # what the engine runs for that label
    assert (sampler.scheduler, sampler.options) == ("EulerDiscreteScheduler", {"use_karras_sigmas": True})
    plain = requests.post(f"{served.url}/sdapi/v1/txt2img", json={**body, "scheduler": "automatic"}, timeout=120)
    assert plain.json()["images"][0] != response.json()["images"][0]  # another noise schedule, another image


def test_options_and_models_follow_a_checkpoint_switch(served: Served) -> None:
    """The web UI's dropdown replaces `engine.model` (Txt2Img.switch_model); the API must say so."""
    import dataclasses

    original = served.engine.model
    served.engine.model = dataclasses.replace(original, name="other-model", model_hash="0123456789", is_demo=False)
    try:
        options = requests.get(f"{served.url}/sdapi/v1/options", timeout=30).json()
        assert options["sd_model_checkpoint"].startswith("other-model")
        assert [m["model_name"] for m in requests.get(f"{served.url}/sdapi/v1/sd-models", timeout=30).json()] == ["other-model"]
    finally:
        served.engine.model = original


def test_clip_skip_set_through_options_applies_to_later_generations(served: Served) -> None:
    """webuiapi's set_options({"CLIP_stop_at_last_layers": 2}) is how A1111 scripts set clip skip:
    it persists (GET options says so) and later requests run with it unless override_settings says
    otherwise."""
    api = client(served, sampler="Euler", steps=3)
    try:
        api.set_options({"CLIP_stop_at_last_layers": 2})
        assert api.get_options()["CLIP_stop_at_last_layers"] == 2
        result = api.txt2img(prompt="a cat", seed=4, width=64, height=64)
        assert result.info["clip_skip"] == 2 and parse_infotext(result.info["infotexts"][0])["Clip skip"] == "2"
        own = api.txt2img(prompt="a cat", seed=4, width=64, height=64,
                          override_settings={"CLIP_stop_at_last_layers": 1})
        assert own.info["clip_skip"] == 1 and "Clip skip" not in parse_infotext(own.info["infotexts"][0])
        bad = requests.post(f"{served.url}/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 0}, timeout=30)
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "CLIP_stop_at_last_layers"]
        assert api.get_options()["CLIP_stop_at_last_layers"] == 2
    finally:
        api.set_options({"CLIP_stop_at_last_layers": 1})
    assert client(served).get_options()["CLIP_stop_at_last_layers"] == 1


@pytest.mark.parametrize("skip", [3, 4, 12])
def test_a_clip_skip_deeper_than_the_text_encoder_is_422_naming_the_maximum(served: Served, skip: int) -> None:
    """Clip skip N reads the text encoder's hidden_states[-N]: the demo's encoder has 2 layers, so 4
    to 12 (which the old 1-to-12 check let through) were a 500, and set through /options they made
    every later txt2img fail."""
    assert served.engine.model.pipe.text_encoder.config.num_hidden_layers == 2
    response = _post(served, {"prompt": "a cat", **SMALL, "override_settings": {"CLIP_stop_at_last_layers": skip}})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", "override_settings", "CLIP_stop_at_last_layers"]
    assert "from 1 to 2" in detail["msg"] and detail["ctx"]["maximum"] == 2
    refused = requests.post(f"{served.url}/sdapi/v1/options", json={"CLIP_stop_at_last_layers": skip}, timeout=30)
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "CLIP_stop_at_last_layers"]
    assert "from 1 to 2" in refused.json()["detail"][0]["msg"]
    assert client(served).get_options()["CLIP_stop_at_last_layers"] == 1  # nothing stuck
    later = _post(served, {"prompt": "a cat", **SMALL})
    assert later.status_code == 200 and json.loads(later.json()["info"])["clip_skip"] == 1
    deepest = _post(served, {"prompt": "a cat", **SMALL, "override_settings": {"CLIP_stop_at_last_layers": 2}})
    assert deepest.status_code == 200 and json.loads(deepest.json()["info"])["clip_skip"] == 2


def test_a_clip_skip_set_for_a_deeper_encoder_is_capped_after_a_switch(served: Served,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A clip skip /options accepted stays valid when the web UI loads a model with a shallower text
    encoder: later requests that do not give their own run at that model's deepest, not a 500."""
    requests.post(f"{served.url}/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2}, timeout=30).raise_for_status()
    try:
        monkeypatch.setattr(served.engine.model.pipe.text_encoder.config, "num_hidden_layers", 1)
        response = _post(served, {"prompt": "a cat", **SMALL})
        assert response.status_code == 200 and json.loads(response.json()["info"])["clip_skip"] == 1
    finally:
        monkeypatch.undo()
        requests.post(f"{served.url}/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 1}, timeout=30)


def test_a_samples_format_other_than_png_is_named_in_the_warnings(served: Served) -> None:
    response = _post(served, {"prompt": "x", **SMALL, "send_images": False, "override_settings": {"samples_format": "jpg"}})
    assert response.status_code == 200
    assert any("samples_format" in w for w in json.loads(response.json()["info"])["warnings"])


def test_a_failed_generation_is_a1111s_error_shape_and_leaves_the_weights(served: Served,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A1111's handle_exception answers {error: the exception's type, detail, body, errors: its text}."""

    class NansException(RuntimeError):
        pass

    def fail(*_args: Any, **_kwargs: Any) -> Any:
        raise NansException("A tensor with all NaNs was produced in Unet.")

    monkeypatch.setattr(served.engine, "generate", fail)
    response = _post(served, {"prompt": "a cat <lora:demo_warm:1>", **SMALL, "seed": 3})
    assert response.status_code == 500
    assert response.json() == {"error": "NansException", "detail": "", "body": "",
                               "errors": "generation failed: NansException: A tensor with all NaNs was produced in Unet."}
    monkeypatch.undo()
    assert served.is_pristine()
    assert _post(served, {"prompt": "a cat", **SMALL, "seed": 3}).status_code == 200
