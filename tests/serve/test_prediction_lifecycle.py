"""A prediction's life through real requests: input that cannot be answered as JSON is refused
before anything is made."""

from __future__ import annotations

import uuid

import pytest
import requests

from tests.serve.conftest import Served


@pytest.mark.parametrize(("extra", "key"), [('"go_fast": NaN', "go_fast"), ('"megapixels": -Infinity', "megapixels"),
                                            ('"deep": {"x": [1, Infinity]}', "deep")])
def test_a_non_finite_extra_input_is_422_before_anything_is_made(served: Served, extra: str, key: str) -> None:
    """Python's json reads NaN: an unused extra input kept it, the prediction was made and ran, and
    the answer (which echoes the input) was a 500 while GET then said succeeded."""
    pid = "poison-" + uuid.uuid4().hex[:8]
    body = '{"prompt": "a cat", "num_inference_steps": 2, "width": 64, "height": 64, ' + extra + "}"
    raw = f'{{"input": {body}, "id": "{pid}"}}'
    response = requests.post(f"{served.url}/predictions", data=raw.encode(),
                             headers={"Content-Type": "application/json", "Prefer": "wait"}, timeout=120)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "input", key]
    assert requests.get(f"{served.url}/predictions/{pid}", timeout=10).status_code == 404  # nothing was made
    listed = requests.get(f"{served.url}/predictions", timeout=10)
    assert listed.status_code == 200 and pid not in {p["id"] for p in listed.json()["results"]}
