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


def test_factor_cache_stays_within_its_limit_and_two_sets_that_fit_are_never_rebuilt(files) -> None:
    """Robustness rule 17 for the patcher's factor cache: cycling through six LoRAs never holds
    more than the configured limit. A limit holding two LoRAs' factors makes none again when
    switching between them; one holding less makes some at every switch (what the H200 run saw
    on SDXL with a 512 MB default)."""
    import copy

    from loraprompt import Patcher, read_adapter

    adapters = [read_adapter(f) for f in files]
    probe = Patcher(copy.deepcopy(tiny_sd1()))
    probe.sync([(adapters[0], 1.0, 1.0)])
    one = probe._deltas.nbytes  # one LoRA's factors

    small = Patcher(copy.deepcopy(tiny_sd1()), delta_cache_mb=2.5 * one / 2**20)
    for _ in range(2):
        for adapter in adapters:
            small.sync([(adapter, 1.0, 1.0)])
            assert 0 < small._deltas.nbytes <= small._deltas.limit_bytes
    built = [small.sync([(x, 1.0, 1.0)]).factors_built for x in adapters[:2] * 3]
    assert built[2:] == [0, 0, 0, 0]

    tight = Patcher(copy.deepcopy(tiny_sd1()), delta_cache_mb=1.3 * one / 2**20)
    built = [tight.sync([(x, 1.0, 1.0)]).factors_built for x in adapters[:2] * 3]
    assert all(n > 0 for n in built[2:]) and tight._deltas.nbytes <= tight._deltas.limit_bytes
