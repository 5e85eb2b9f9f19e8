"""The tools' device plumbing (--device cpu|cuda|auto) and the overlapped read/compute/write stream."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest
import torch

from loraprompt.adapters import read_adapter
from loraprompt.cli import main
from loraprompt.errors import ToolError
from loraprompt.patcher import Patcher
from loraprompt.tools.extract import extract_lora
from loraprompt.tools.io import StreamingWriter, load_tensors
from loraprompt.tools.merge import merge_checkpoint
from loraprompt.tools.resize import resize_lora
from loraprompt.tools.stream import overlapped, resolve_device
from loraprompt.tools.svd import RankTarget

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_device_names() -> None:
    assert resolve_device(None) == resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ToolError, match="'meta' is not supported"):
        resolve_device("meta")  # no data: every merged weight would be garbage
    with pytest.raises(ToolError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ToolError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_merge_on_an_explicit_cpu_device_is_the_default_merge_byte_for_byte(
        tmp_path: Path, sd1_inputs: dict[str, Path]) -> None:
    """device="cpu" and "auto" (no GPU here) take the same .to(device)/to_host path a GPU takes, and
    give the default's bytes; two runs give the same bytes (the threads do not reorder anything)."""
    ckpt, lora = sd1_inputs["checkpoint"], sd1_inputs["lora"]
    outputs = []
    for name, device in (("default", None), ("cpu", "cpu"), ("again", torch.device("cpu"))):
        report = merge_checkpoint(ckpt, [(lora, 0.7, 1.1)], tmp_path / f"{name}.safetensors", device=device)
        assert report.device == "cpu" and report.weights_changed > 40
        assert report.buffers["read_ahead_peak"] > 0 and report.buffers["write_behind_peak"] > 0
        outputs.append((tmp_path / f"{name}.safetensors").read_bytes())
    assert outputs[0] == outputs[1] == outputs[2]


def test_unavailable_device_fails_before_writing(tmp_path: Path, sd1_inputs: dict[str, Path],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.safetensors"
    code = main(["merge", "--checkpoint", str(sd1_inputs["checkpoint"]), str(sd1_inputs["lora"]), "-o", str(out),
                 "--device", "cuda:7" if torch.cuda.is_available() else "cuda", "--quiet"])
    assert code == 1 and "cuda" in capsys.readouterr().err
    assert main(["merge", str(sd1_inputs["lora"]), "-o", str(out), "--device", "cpu:0", "--quiet"]) == 1
    assert "--device" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_overlapped_keeps_order_and_bounds_what_it_holds() -> None:
    sizes = [5, 1, 7, 3, 30, 2, 2, 9]  # one item (30) larger than the budget passes alone
    written: list[int] = []
    peaks = overlapped(range(len(sizes)), lambda i: i * 10, lambda i, loaded: loaded + 1, lambda i, v: written.append(v),
                       size=lambda i: sizes[i], read_ahead=10, write_behind=10)
    assert written == [i * 10 + 1 for i in range(len(sizes))]
    assert peaks["read_ahead_peak"] <= 30 and peaks["write_behind_peak"] <= 30


@pytest.mark.parametrize("stage", ["load", "compute", "store"])
def test_overlapped_raises_the_first_error_and_ends_its_threads(stage: str) -> None:
    before = threading.active_count()

    def step(name: str, i: int) -> int:
        if name == stage and i == 3:
            raise ValueError(f"{name} failed at {i}")
        return i

    with pytest.raises(ValueError, match=f"{stage} failed at 3"):
        overlapped(range(100), lambda i: step("load", i), lambda i, v: step("compute", v),
                   lambda i, v: step("store", v), size=lambda i: 1, read_ahead=4, write_behind=4)
    assert threading.active_count() == before


def test_copy_without_the_kernel_path_writes_the_same_bytes(tmp_path: Path) -> None:
    """An unchanged tensor is copied file to file (copy_file_range); a source without a file
    descriptor (or a system without that call) goes through chunked reads: same bytes."""
    tensor = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    data = b"0123456789" + tensor.numpy().tobytes()
    (tmp_path / "src.bin").write_bytes(data)
    results = []
    for source in (open(tmp_path / "src.bin", "rb"), io.BytesIO(data)):
        with source, open(tmp_path / "out.safetensors", "wb", buffering=0) as handle:
            writer = StreamingWriter(handle, [("t", torch.float32, (4, 6))])
            writer.copy("t", source, 10, len(data))
            writer.close()
        results.append((tmp_path / "out.safetensors").read_bytes())
        assert torch.equal(load_tensors(tmp_path / "out.safetensors")[0]["t"], tensor)
    assert results[0] == results[1]
    with open(tmp_path / "out.safetensors", "wb", buffering=0) as handle, io.BytesIO(data[:-4]) as short:
        writer = StreamingWriter(handle, [("t", torch.float32, (4, 6))])
        with pytest.raises(Exception, match="shorter than its header"):
            writer.copy("t", short, 10, len(data))


@CUDA
def test_merge_on_cuda_equals_the_patcher_on_a_cuda_model(tmp_path: Path) -> None:
    from tests.fixtures.loras import FAMILIES, write_kohya_lora
    from tests.tools.checkpoints import a1111_models, write_single_file

    ckpt = tmp_path / "model.safetensors"
    keys = write_single_file(a1111_models("sd1"), "sd1", ckpt, torch.float16)
    lora = write_kohya_lora("sd1", tmp_path / "a.safetensors", seed=3).path
    report = merge_checkpoint(ckpt, [(lora, 0.6, 0.8)], tmp_path / "merged.safetensors", device="cuda")
    assert report.device.startswith("cuda")
    models = {c: m.to("cuda", torch.float16) for c, m in FAMILIES["sd1"](seed=0).items()}
    Patcher(models).sync([(read_adapter(lora), 0.6, 0.8)])
    expected = {c: m.state_dict() for c, m in models.items()}
    merged, _ = load_tensors(report.output)
    for key, (component, own) in keys.items():
        assert torch.equal(merged[key], expected[component][own].cpu()), key


@CUDA
def test_extract_and_resize_on_cuda_match_the_cpu(tmp_path: Path, sd1_inputs: dict[str, Path]) -> None:
    ckpt, lora = sd1_inputs["checkpoint"], sd1_inputs["lora"]
    merged = merge_checkpoint(ckpt, [lora], tmp_path / "merged.safetensors").output
    reports = [extract_lora(merged, ckpt, tmp_path / f"x_{d}.safetensors", RankTarget(rank=4), min_diff=1e-7, device=d)
               for d in ("cpu", "cuda")]
    assert [(m.key, m.rank) for m in reports[0].modules] == [(m.key, m.rank) for m in reports[1].modules]
    for a, b in zip(reports[0].modules, reports[1].modules):
        assert b.kept == pytest.approx(a.kept, abs=1e-4)
    resized = [resize_lora(lora, tmp_path / f"r_{d}.safetensors", RankTarget(rank=2), device=d) for d in ("cpu", "cuda")]
    for a, b in zip(resized[0].modules, resized[1].modules):
        assert (a.key, a.new_rank) == (b.key, b.new_rank) and b.kept == pytest.approx(a.kept, abs=1e-4)
