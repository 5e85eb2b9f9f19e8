"""What a prediction may name as a LoRA, through real requests: references with a control character
(403) or a malformed URL (422) are refused naming the field instead of a 500."""

from __future__ import annotations

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
