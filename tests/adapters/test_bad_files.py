"""Bad adapter files (robustness.md items 1-12): each is a clear AdapterFileError naming the file."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from loraprompt.adapters import read_adapter
from loraprompt.errors import AdapterFileError
from loraprompt.library.safetensors_header import read_header

DOWN = "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"
UP = "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight"
ALPHA = "lora_unet_down_blocks_0_attentions_0_proj_in.alpha"


def raw_file(path: Path, header: Any, data: bytes = b"", header_len: int | None = None, header_bytes: bytes | None = None) -> Path:
    """A safetensors file written byte by byte, so it can be wrong in exactly one way."""
    body = header_bytes if header_bytes is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(body) if header_len is None else header_len) + body + data)
    return path


def good_lora(path: Path, **overrides: torch.Tensor) -> Path:
    tensors = {DOWN: torch.randn(2, 8), UP: torch.randn(8, 2), ALPHA: torch.tensor(2.0)}
    tensors.update(overrides)
    save_file(tensors, str(path))
    return path


def refused(path: Path, match: str) -> AdapterFileError:
    with pytest.raises(AdapterFileError, match=match) as info:
        read_adapter(path)
    assert str(path) in str(info.value)
    return info.value


def test_empty_short_directory_and_text(tmp_path: Path) -> None:
    (tmp_path / "empty.safetensors").write_bytes(b"")
    refused(tmp_path / "empty.safetensors", "too short")
    (tmp_path / "seven.safetensors").write_bytes(b"1234567")
    refused(tmp_path / "seven.safetensors", "too short")
    (tmp_path / "x.safetensors").mkdir()
    refused(tmp_path / "x.safetensors", "directory")
    (tmp_path / "notes.safetensors").write_text("this is a text file that someone renamed to .safetensors\n" * 3)
    refused(tmp_path / "notes.safetensors", "header length")
    refused(tmp_path / "missing.safetensors", "no such file")


def test_header_lengths(tmp_path: Path) -> None:
    header = {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    refused(raw_file(tmp_path / "long.safetensors", header, b"\0" * 4, header_len=10_000), "does not fit")
    refused(raw_file(tmp_path / "huge.safetensors", header, b"\0" * 4, header_len=200 * 1024 * 1024), "exceeds")


@pytest.mark.parametrize(
    ("body", "match"),
    [(b"\xff\xfe{}", "not UTF-8"), (b"[1, 2]", "not a JSON object"), (b'{"a": {"dtype": "F32", ', "not valid JSON")],
)
def test_header_text(tmp_path: Path, body: bytes, match: str) -> None:
    refused(raw_file(tmp_path / "h.safetensors", None, header_bytes=body), match)


@pytest.mark.parametrize(
    ("offsets", "data_len", "match"),
    [
        ([[0, 8], [4, 12]], 12, "overlaps"),
        ([[0, 8], [12, 20]], 20, "gap"),
        ([[0, 8], [8, 16]], 12, "beyond"),
        ([[0, 8], [8, 16]], 20, "left after"),
    ],
)
def test_offsets(tmp_path: Path, offsets: list[list[int]], data_len: int, match: str) -> None:
    header = {name: {"dtype": "F32", "shape": [2], "data_offsets": off} for name, off in zip(("a", "b"), offsets)}
    refused(raw_file(tmp_path / "o.safetensors", header, b"\0" * data_len), match)


def test_duplicate_tensor_name(tmp_path: Path) -> None:
    body = b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}'
    err = refused(raw_file(tmp_path / "d.safetensors", None, b"\0" * 8, header_bytes=body), "twice")
    assert err.key == "a"


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ({"dtype": "F33", "shape": [1], "data_offsets": [0, 4]}, "unknown dtype"),
        ({"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}, "bad shape"),
        ({"dtype": "F32", "shape": [1 << 40, 1 << 40], "data_offsets": [0, 4]}, "overflows"),
        ({"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}, "needs 8"),
    ],
)
def test_bad_entries(tmp_path: Path, entry: dict[str, Any], match: str) -> None:
    err = refused(raw_file(tmp_path / "e.safetensors", {"t": entry}, b"\0" * 4), match)
    assert err.key == "t"


def test_metadata_values(tmp_path: Path) -> None:
    header = {"__metadata__": {"n": 3}, "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    refused(raw_file(tmp_path / "m.safetensors", header, b"\0" * 4), "not a string")
    header["__metadata__"] = {"big": "x" * (16 * 1024 * 1024 + 1)}
    refused(raw_file(tmp_path / "big.safetensors", header, b"\0" * 4), "too large")


def test_header_reader_agrees_with_safetensors_on_a_good_file(tmp_path: Path) -> None:
    path = good_lora(tmp_path / "ok.safetensors")
    header = read_header(path)
    assert set(header.tensors) == {DOWN, UP, ALPHA}
    assert header.tensors[DOWN].shape == (2, 8) and header.tensors[DOWN].dtype == "F32"
    assert header.file_size == path.stat().st_size
    assert sum(t.nbytes for t in header.tensors.values()) == header.file_size - header.data_offset


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2])
def test_low_precision_tensors_are_read_and_cast(tmp_path: Path, dtype: torch.dtype) -> None:
    down, up = torch.randn(2, 8).to(dtype), torch.randn(8, 2).to(dtype)
    path = good_lora(tmp_path / "lp.safetensors", **{DOWN: down, UP: up})
    mod = read_adapter(path).modules["unet/down_blocks_0_attentions_0_proj_in"]
    dw, _ = mod.delta(torch.zeros(8, 8), 1.0)
    assert dw is not None and dw.dtype == torch.float32
    torch.testing.assert_close(dw, up.float() @ down.float())


def test_nan_is_refused_with_its_key(tmp_path: Path) -> None:
    bad = torch.randn(8, 2)
    bad[3, 1] = float("nan")
    assert refused(good_lora(tmp_path / "nan.safetensors", **{UP: bad}), "NaN").key == UP
    inf = torch.randn(2, 8)
    inf[0, 0] = float("inf")
    assert refused(good_lora(tmp_path / "inf.safetensors", **{DOWN: inf}), "Inf").key == DOWN


def test_bad_lora_groups(tmp_path: Path) -> None:
    # the key named is the tensor of the wrong rank, not the group's first key (its .alpha)
    assert refused(good_lora(tmp_path / "rank.safetensors", **{UP: torch.randn(8, 3)}), "ranks differ").key == UP
    refused(good_lora(tmp_path / "alpha.safetensors", **{ALPHA: torch.ones(2)}), "scalar")
    refused(good_lora(tmp_path / "zero.safetensors", **{ALPHA: torch.tensor(0.0)}), "alpha is zero")
    save_file({UP: torch.randn(8, 2), ALPHA: torch.tensor(1.0)}, str(tmp_path / "orphan.safetensors"))
    refused(tmp_path / "orphan.safetensors", "no algorithm accepts")
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.randn(2)}, str(tmp_path / "ckpt.safetensors"))
    refused(tmp_path / "ckpt.safetensors", "no LoRA/LyCORIS module")


class Exploit:
    """A pickle payload that would create a file when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("suffix", [".pt", ".ckpt", ".bin", ".pth"])
def test_malicious_pickle_runs_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / f"evil{suffix}"
    torch.save({DOWN: torch.randn(2, 8), "payload": Exploit(marker)}, path)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    refused(path, "refused")
    assert not marker.exists()


@pytest.mark.parametrize("version", ["2.5.1", "2.5.1+cu124", "1.13.0"])
def test_pickles_are_refused_on_torch_older_than_2_6(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: str) -> None:
    """weights_only had bypasses before torch 2.6 (CVE-2025-32434): there even a plain state dict is
    refused unread, and an exploit runs nothing."""
    plain, evil, marker = tmp_path / "ok.pth", tmp_path / "evil.pt", tmp_path / "pwned"
    torch.save({DOWN: torch.randn(2, 8), UP: torch.randn(8, 2)}, plain)
    torch.save({DOWN: torch.randn(2, 8), "payload": Exploit(marker)}, evil)
    monkeypatch.setattr(torch, "__version__", version)
    for path in (plain, evil):
        assert version in str(refused(path, r"refusing pickled weights .*< 2\.6"))
    assert not marker.exists()
    save_file({DOWN: torch.randn(2, 8), UP: torch.randn(8, 2)}, str(tmp_path / "ok.safetensors"))
    assert read_adapter(tmp_path / "ok.safetensors").modules  # safetensors never need torch.load


def test_plain_pickled_state_dict_loads(tmp_path: Path) -> None:
    path = tmp_path / "ok.pt"
    torch.save({DOWN: torch.randn(2, 8), UP: torch.randn(8, 2), ALPHA: 2.0}, path)
    adapter = read_adapter(path)
    assert adapter.modules["unet/down_blocks_0_attentions_0_proj_in"].alpha == 2.0
    (tmp_path / "empty.pt").write_bytes(b"")
    refused(tmp_path / "empty.pt", "empty")
    (tmp_path / "junk.ckpt").write_bytes(b"not a zip and not a pickle")
    refused(tmp_path / "junk.ckpt", "torch file|refused")


def test_a_replaced_file_is_read_fresh(tmp_path: Path) -> None:
    path = good_lora(tmp_path / "r.safetensors")
    first = read_adapter(path)
    good_lora(path, **{UP: torch.randn(8, 4), DOWN: torch.randn(4, 8)})
    second = read_adapter(path)
    assert first.modules["unet/down_blocks_0_attentions_0_proj_in"].tensors["up"].shape == (8, 2)
    assert second.modules["unet/down_blocks_0_attentions_0_proj_in"].tensors["up"].shape == (8, 4)
    path.write_bytes(path.read_bytes()[:-10])
    refused(path, "left after|beyond")


def test_a_bool_alpha_is_refused_naming_its_key_and_a_negative_one_kept(tmp_path: Path) -> None:
    """A bool alpha (a safetensors BOOL tensor, or `true` for lora_alpha in diffusers' header) read as
    1.0 silently: both readers (read_adapter and the tools' read_lora) refuse it, naming the key.
    A negative alpha stays accepted, as kohya and A1111 take it."""
    from loraprompt.tools.lora import read_lora

    bool_tensor = good_lora(tmp_path / "bool.safetensors", **{ALPHA: torch.tensor(True)})
    assert refused(bool_tensor, "alpha is a bool tensor").key == ALPHA
    with pytest.raises(AdapterFileError, match=r"\[unet/down_blocks_0_attentions_0_proj_in.alpha\]: alpha is a bool tensor"):
        read_lora(bool_tensor)
    peft = {"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": torch.randn(2, 8),
            "unet.down_blocks.0.attentions.0.proj_in.lora_B.weight": torch.randn(8, 2)}
    bool_metadata = tmp_path / "bool-metadata.safetensors"
    save_file(peft, str(bool_metadata), metadata={"lora_adapter_metadata": json.dumps({"unet.r": 2, "unet.lora_alpha": True})})
    error = refused(bool_metadata, r"lora_alpha for down_blocks\.0\.attentions\.0\.proj_in is true, not a number")
    assert error.key == "__metadata__.lora_adapter_metadata"
    with pytest.raises(AdapterFileError, match=r"lora_alpha for down_blocks\.0\.attentions\.0\.proj_in is true, not a number"):
        read_lora(bool_metadata)
    negative = good_lora(tmp_path / "negative.safetensors", **{ALPHA: torch.tensor(-4.0)})
    assert [m.alpha for m in read_adapter(negative).modules.values()] == [-4.0]
    assert [m.alpha for m in read_lora(negative).modules.values()] == [-4.0]
