"""The adapter cache: bounded by its limit, keyed by file identity, shared safely."""

from __future__ import annotations

import os

import pytest
import torch

from loraprompt.cache import AdapterCache, DeltaCache, adapter_nbytes
from tests.fixtures.models import tiny_sd1
from tests.integrations.tiny_pipeline import write_kohya_lora


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    model = tiny_sd1()
    return [write_kohya_lora(folder / f"l{i}.safetensors", model, seed=i) for i in range(6)]


def test_memory_stays_within_the_limit_while_cycling_through_loras(files) -> None:
    one = adapter_nbytes(AdapterCache().get(files[0]))
    cache = AdapterCache(limit_mb=2.5 * one / 2**20)
    for _ in range(3):
        for path in files:
            adapter = cache.get(path)
            assert adapter.path == os.path.realpath(path)
            assert cache.nbytes <= cache.limit_bytes and len(cache) <= 2
    assert len(cache) == 2


def test_a_hit_is_the_same_object_and_a_changed_file_is_read_again(files, tmp_path) -> None:
    cache = AdapterCache()
    path = tmp_path / "x.safetensors"
    path.write_bytes(files[0].read_bytes())
    first = cache.get(path)
    assert cache.get(path) is first
    replacement = tmp_path / "x.tmp"
    replacement.write_bytes(files[1].read_bytes())
    os.replace(replacement, path)  # how tools save: a new file renamed over the old one
    second = cache.get(path)
    assert second is not first and len(cache) == 1
    up = next(iter(second.modules.values())).tensors["up"]
    assert not torch.equal(up, next(iter(first.modules.values())).tensors["up"])


def test_a_reader_error_caches_nothing(tmp_path) -> None:
    from loraprompt.errors import AdapterFileError

    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"1234567")
    cache = AdapterCache()
    with pytest.raises(AdapterFileError, match=r"bad\.safetensors"):
        cache.get(bad)
    assert len(cache) == 0 and cache.nbytes == 0


def test_delta_cache_never_evicts_what_the_current_generation_uses() -> None:
    cache = DeltaCache(limit_mb=3 * 4 / 2**20)  # room for three float32 scalars
    for key in "abc":
        assert cache.put(key, torch.zeros(1))
    cache.generation += 1
    assert cache.get("a") is not None
    assert cache.put("d", torch.zeros(1))  # evicts b (older generation), keeps a
    assert cache.get("b") is None and cache.get("a") is not None
    assert cache.put("e", torch.zeros(1))  # evicts c
    assert not cache.put("f", torch.zeros(1))  # a, d, e are all in use now: refused, not thrashed
    assert cache.nbytes == 12
