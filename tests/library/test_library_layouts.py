"""A scan reads each distinct tensor section once (`quickheader.Layouts`): every file still gets
exactly the record, verdict and family that reading it alone gives."""

from __future__ import annotations

import gc
import json
import struct
from pathlib import Path

import pytest

from loraprompt.errors import AdapterFileError
from loraprompt.library import Library
from loraprompt.library.entry import header_record
from loraprompt.library.quickheader import Layouts, read_quick_header

from .conftest import SD1_KEYS, SD2_KEYS, SDXL_KEYS, kohya_metadata, write_lora

DIT_KEYS = {"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": (4, 16),
            "transformer.transformer_blocks.0.attn.add_q_proj.lora_A.weight": (4, 16)}
METADATA: list[dict[str, str] | None] = [
    None, {}, kohya_metadata("a"), kohya_metadata("b", base="sdxl_base_v1-0"), kohya_metadata("c", base="sd_v2"),
    {"modelspec.architecture": "flux-1-dev/lora"}, {"modelspec.architecture": "stable-diffusion-v3-medium/lora"},
    {"ss_network_module": "networks.lora", "ss_v2": "False"}, {"modelspec.trigger_phrase": "x, y", "ss_output_name": "z"},
]


def raw_file(path: Path, body: bytes, data: bytes = b"") -> Path:
    path.write_bytes(struct.pack("<Q", len(body)) + body + data)
    return path


@pytest.mark.parametrize("keys", [SD1_KEYS, SD2_KEYS, SDXL_KEYS, DIT_KEYS], ids=["sd1", "sd2", "sdxl", "dit"])
def test_files_sharing_a_tensor_section_get_their_own_record(tmp_path: Path, keys: dict[str, tuple[int, ...]]) -> None:
    layouts = Layouts()
    for i, metadata in enumerate(METADATA):
        p = write_lora(tmp_path / f"f{i}.safetensors", metadata, keys=keys)
        assert header_record(str(p), layouts) == header_record(str(p)), metadata
    assert len(layouts.sections) == 1  # one tensor section, read once
    families = {json.dumps(k[1]) for k in layouts.derived}
    assert len(layouts.derived) == len(families)  # a family decision per (section, what the metadata says)


def test_a_known_section_in_a_truncated_or_padded_file_is_refused_alike(tmp_path: Path) -> None:
    good = write_lora(tmp_path / "good.safetensors", kohya_metadata("g"))
    layouts = Layouts()
    header_record(str(good), layouts)
    body = good.read_bytes()
    for name, data in (("short", body[:-2]), ("long", body + b"\0\0")):
        p = tmp_path / f"{name}.safetensors"
        p.write_bytes(data)
        with pytest.raises(AdapterFileError) as quick:
            read_quick_header(p, layouts)
        with pytest.raises(AdapterFileError) as alone:
            read_quick_header(p)
        assert "truncated or padded" in quick.value.reason and quick.value.reason == alone.value.reason


@pytest.mark.parametrize(
    ("body", "data"),
    [
        (b'{"__metadata__":{},}', b""),  # a trailing comma: not JSON, though {} + "}" would be
        (b'{"__metadata__":{"a":1},"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', b"\0" * 4),
        (b'{"__metadata__":{"a":"1"} "w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', b"\0" * 4),
        (b'{"__metadata__":{"a":"1"},"w":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}', b""),
        (b'{"__metadata__":{"a":"1"},"w":{"dtype":"F32","shape":[1]}}', b""),
        (b'{"__metadata__":{"a":"\xff"},"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', b"\0" * 4),
    ],
)
def test_broken_headers_get_the_verdict_of_the_full_read(tmp_path: Path, body: bytes, data: bytes) -> None:
    p = raw_file(tmp_path / "bad.safetensors", body, data)
    with pytest.raises(AdapterFileError) as quick:
        read_quick_header(p, Layouts())
    with pytest.raises(AdapterFileError) as alone:
        read_quick_header(p)
    assert (quick.value.reason, quick.value.key) == (alone.value.reason, alone.value.key)


def test_unusual_layouts_are_read_in_full(tmp_path: Path) -> None:
    entry = b'"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}'
    twice = raw_file(tmp_path / "twice.safetensors", b'{"__metadata__":{"a":"1"},' + entry + b',"__metadata__":{"a":"2"}}', b"\0" * 4)
    spaced = raw_file(tmp_path / "spaced.safetensors", b'{ "__metadata__": {"a": "1"}, ' + entry + b"}", b"\0" * 4)
    last = raw_file(tmp_path / "last.safetensors", b"{" + entry + b',"__metadata__":{"a":"3"}}', b"\0" * 4)
    layouts = Layouts()
    for p, metadata in ((twice, {"a": "2"}), (spaced, {"a": "1"}), (last, {"a": "3"})):
        found = read_quick_header(p, layouts)
        assert found.metadata == read_quick_header(p).metadata == metadata
        assert found.layout is None and dict(found.shapes) == {"w": (1,)}
    assert not layouts.sections


def test_a_small_budget_forgets_and_stays_right(tmp_path: Path) -> None:
    files = [write_lora(tmp_path / f"{name}.safetensors", kohya_metadata(name), keys=keys)
             for name, keys in (("a", SD1_KEYS), ("b", SDXL_KEYS), ("c", SD1_KEYS), ("d", SD2_KEYS))]
    layouts = Layouts(budget=len(read_quick_header(files[0], Layouts()).layout or "") + 10)
    for p in files * 2:
        assert header_record(str(p), layouts) == header_record(str(p))
        assert len(layouts.sections) == 1
    tiny = Layouts(budget=10)  # no section fits: each file is read alone
    assert header_record(str(files[1]), tiny) == header_record(str(files[1])) and not tiny.sections


def test_a_library_scans_files_of_one_layout_each_with_its_metadata(lora_dir: Path) -> None:
    for i, base in enumerate(("sd_v1", "sdxl_base_v1-0", "sd_v1")):
        write_lora(lora_dir / f"l{i}.safetensors", kohya_metadata(f"alias{i}", base=base))
    lib = Library([lora_dir], persist=False)
    got = {e.name: (e.alias, e.detected_family, e.family_source, bool(e.notes)) for e in lib.entries}
    assert got == {"l0": ("alias0", "sd1", "keys", False), "l1": ("alias1", "sd1", "keys", True), "l2": ("alias2", "sd1", "keys", False)}


def test_the_scan_leaves_the_garbage_collector_as_it_found_it(lora_dir: Path) -> None:
    write_lora(lora_dir / "a.safetensors")
    assert gc.isenabled()
    lib = Library([lora_dir], persist=False)
    assert gc.isenabled()
    gc.disable()
    try:
        lib.refresh()
        assert not gc.isenabled()
    finally:
        gc.enable()
    assert gc.get_freeze_count() == 0  # the scan's objects went to the oldest generation, none stay frozen
    hosts = [[] for _ in range(3)]  # tracked objects of a host that froze them (a pre-fork server)
    gc.freeze()
    try:
        lib.refresh()
        collectable = {id(o) for o in gc.get_objects()}  # every generation; frozen objects are in none
        assert gc.isenabled() and gc.get_freeze_count() > 0 and not collectable & set(map(id, hosts))
    finally:
        gc.unfreeze()


def test_a_known_section_followed_by_what_json_does_not_allow_is_refused(tmp_path: Path) -> None:
    entry = b'{"__metadata__":{"a":"1"},"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    layouts = Layouts()
    assert read_quick_header(raw_file(tmp_path / "good.safetensors", entry + b"   ", b"\0" * 4), layouts).layout is not None
    for i, tail in enumerate((b"\x0b", b" \x0c", b"x")):
        p = raw_file(tmp_path / f"bad{i}.safetensors", entry + tail, b"\0" * 4)
        with pytest.raises(AdapterFileError, match="not valid JSON"):
            read_quick_header(p, layouts)
