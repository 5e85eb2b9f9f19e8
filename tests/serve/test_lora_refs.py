"""What a prediction may name as a LoRA, through real requests: references with a control character
(403) or a malformed URL (422) are refused naming the field instead of a 500; a symlink the library
lists is used as /sdapi/v1/txt2img uses it, while traversal out of the folders stays 403."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.serve.conftest import Served

TINY = {"num_inference_steps": 2, "width": 64, "height": 64}


def predict(served: Served, inputs: dict[str, Any]) -> requests.Response:
    return requests.post(f"{served.url}/predictions", json={"input": {"prompt": "a <1>", **TINY, **inputs}},
                         headers={"Prefer": "wait"}, timeout=120)


@pytest.mark.parametrize(("inputs", "field"), [
    ({"lora_urls": "/tmp/x\0.safetensors"}, "lora_urls"),  # os.path.realpath raised "embedded null byte": 500
    ({"lora_urls": "file:///tmp/x%00.safetensors"}, "lora_urls"),  # the same NUL, percent-encoded
    ({"lora_urls": "a\0/../b"}, "lora_urls"),
    ({"lora_urls": "demo_warm\x1b"}, "lora_urls"),
    ({"lora_weights": "styles/\ndemo_neon"}, "lora_weights"),
])
def test_a_control_character_in_a_lora_reference_is_403_naming_the_field(served: Served, inputs: dict[str, Any],
                                                                        field: str) -> None:
    response = predict(served, inputs)
    assert response.status_code == 403, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", "input", field] and "control character" in detail["msg"]


@pytest.mark.parametrize("url", ["http://[::1", "https://[zz/x.safetensors", "http://127.0.0.1:port/x.safetensors",
                                 "http://127.0.0.1:99999/x.safetensors", "http://", "https:///x.safetensors"])
def test_a_malformed_url_is_422_naming_the_field(served: Served, url: str) -> None:
    """urlsplit raised ValueError ("Invalid IPv6 URL"): a 500; a URL without a host was queued to fail."""
    before = set(served.service.predictions)
    response = predict(served, {"lora_urls": f"demo_warm|{url}"})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", "input", "lora_urls"] and "not a valid URL" in detail["msg"]
    assert set(served.service.predictions) == before  # refused before anything was made


@pytest.fixture
def linked(served: Served) -> Iterator[Path]:
    """A LoRA reached through a symlinked file and one through a symlinked folder, both leading out of
    the LoRA folder, and a sibling folder `LoraEvil/` next to it; all gone afterwards."""
    outside = served.root / "linked_elsewhere"
    outside.mkdir()
    shutil.copy(served.lora_dir / "demo_warm.safetensors", outside / "ext_style.safetensors")
    evil = served.lora_dir.parent / "LoraEvil"
    evil.mkdir()
    shutil.copy(served.lora_dir / "demo_sketch.safetensors", evil / "evil.safetensors")
    (served.lora_dir / "link.safetensors").symlink_to(outside / "ext_style.safetensors")
    (served.lora_dir / "external").symlink_to(outside, target_is_directory=True)
    try:
        yield outside
    finally:
        (served.lora_dir / "link.safetensors").unlink()
        (served.lora_dir / "external").unlink()
        shutil.rmtree(outside)
        shutil.rmtree(evil)
        served.service.library.base.refresh()


def test_a_symlink_the_library_lists_is_used_by_name_and_path(served: Served, linked: Path) -> None:
    """The library lists LoRAs reached through a symlink and <lora:link:1> applies them; a prediction
    naming the same file by its plain relative path was refused (403: its real path is outside)."""
    requests.post(f"{served.url}/sdapi/v1/refresh-loras", timeout=30)
    listed = {e["path"] for e in requests.get(f"{served.url}/sdapi/v1/loras", timeout=10).json()}
    assert {str(served.lora_dir / "link.safetensors"), str(served.lora_dir / "external" / "ext_style.safetensors")} <= listed
    for ref, name in (("link", "link"), ("link.safetensors", "link"), (str(served.lora_dir / "link.safetensors"), "link"),
                      ("external/ext_style", "ext_style"),
                      ((served.lora_dir / "external" / "ext_style.safetensors").as_uri(), "ext_style")):
        response = predict(served, {"lora_urls": ref, "seed": 3})
        assert response.status_code == 201, (ref, response.text)
        pred = response.json()
        assert pred["status"] == "succeeded", (ref, pred["logs"])
        assert f"<lora:{name}:0.5>" in pred["logs"], ref


def test_a_new_symlink_is_used_without_a_refresh(served: Served, linked: Path) -> None:
    """The library rescans a changed folder before refusing: a link made a moment ago works as soon
    as the library would list it."""
    served.service.library.base.refresh()
    fresh = served.lora_dir / "fresh_link.safetensors"
    fresh.symlink_to(linked / "ext_style.safetensors")
    try:
        pred = predict(served, {"lora_urls": "fresh_link"}).json()
        assert pred["status"] == "succeeded", pred
    finally:
        fresh.unlink()


def test_traversal_out_of_the_folders_stays_403_beside_listed_symlinks(served: Served, linked: Path) -> None:
    beside = linked.parent / "demo_warm.safetensors"  # outside the folders, unlisted
    shutil.copy(served.lora_dir / "demo_sketch.safetensors", beside)
    assert not beside.resolve().is_relative_to(served.lora_dir.resolve())
    requests.post(f"{served.url}/sdapi/v1/refresh-loras", timeout=30)
    root = served.lora_dir
    for ref in ("../LoraEvil/evil", "../LoraEvil/evil.safetensors", str(root.parent / "LoraEvil" / "evil.safetensors"),
                "file://" + str(root.parent / "LoraEvil" / "evil.safetensors"),
                "file://" + str(root) + "/%2e%2e/LoraEvil/evil.safetensors",
                "file://" + str(root) + "/external/../../LoraEvil/evil.safetensors",
                str(linked / "ext_style.safetensors"),  # the symlink's target by its own path: not listed
                "external/../../LoraEvil/evil",
                # normalized, <root>/demo_warm (listed); the OS follows the link first, to a file beside its target
                "external/../demo_warm", "external/../demo_warm.safetensors"):
        response = predict(served, {"lora_urls": ref})
        assert response.status_code == 403, (ref, response.text)
        assert response.json()["detail"][0]["loc"] == ["body", "input", "lora_urls"]
    beside.unlink()
