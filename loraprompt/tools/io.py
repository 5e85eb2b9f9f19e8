"""Safe file handling for the tools: guarded outputs, atomic streaming safetensors writes, progress."""

from __future__ import annotations

import errno
import io
import json
import math
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
from safetensors import SafetensorError

from loraprompt.errors import AdapterFileError, ToolError
from loraprompt.files import temp_beside

RECIPE_KEY = "loraprompt_recipe"
_READ_ERRORS = (OSError, ValueError, RuntimeError, SafetensorError)

_DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
for _name, _code in (("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2")):
    if hasattr(torch, _name):
        _DTYPES[getattr(torch, _name)] = _code

OUTPUT_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_dtype(name: str | None) -> torch.dtype | None:
    """`fp32`/`fp16`/`bf16` (or None: keep each tensor's dtype) as a torch dtype."""
    if name is None:
        return None
    if name not in OUTPUT_DTYPES:
        raise ToolError(f"unknown dtype {name!r}; choose one of {', '.join(OUTPUT_DTYPES)}")
    return OUTPUT_DTYPES[name]


PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")  # A1111, ComfyUI and diffusers pick the loader by suffix


def check_output(output: str | Path, inputs: Iterable[str | Path], force: bool, folder: bool | None = False) -> Path:
    """Refuse to write over an input, or over an existing output unless `force`; `folder`: whether
    the output is a folder (None: not known yet, see `check_replace`)."""
    out = Path(output)
    for src in inputs:
        src_path = Path(src)
        if out.exists() and src_path.exists() and os.path.samefile(out, src_path):
            raise ToolError(f"{out}: refusing to overwrite the input {src_path}")
        if out.resolve() == src_path.resolve():
            raise ToolError(f"{out}: refusing to overwrite the input {src_path}")
        if src_path.is_dir() and out.resolve().is_relative_to(src_path.resolve()):  # it would be copied into itself
            raise ToolError(f"{out}: the output is inside the input folder {src_path}; write it elsewhere")
    if out.exists() and not force:
        raise ToolError(f"{out}: output exists; pass --force to replace it (force=True from Python)")
    if not out.parent.exists():
        raise ToolError(f"{out}: folder {out.parent} does not exist")
    if out.suffix.lower() in PICKLE_SUFFIXES:
        raise ToolError(f"{out}: the tools write safetensors, and other tools would unpickle a {out.suffix} file; "
                        f"name it {out.with_suffix('.safetensors').name}")
    if folder is not None:
        check_replace(out, folder)
    return out


def check_replace(out: Path, folder: bool) -> None:
    """What --force may replace: a file output never replaces a folder, and a folder output replaces
    only an empty folder or a diffusers model (a previous output), never a folder of other files."""
    if not out.is_dir():
        return
    if not folder:
        raise ToolError(f"{out}: is a folder; name the output file (e.g. {out.name}/out.safetensors)")
    if any(out.iterdir()) and not any((out / name).exists() for name in ("model_index.json", "unet", "transformer")):
        raise ToolError(f"{out}: a folder that is not a diffusers model (no model_index.json, unet/ or "
                        "transformer/); refusing to replace it, even with --force")


def recipe_metadata(tool: str, **fields: Any) -> dict[str, str]:
    """The recipe of a tool run, as one safetensors metadata entry."""
    from loraprompt import __version__

    recipe = {"tool": tool, "loraprompt": __version__, **fields}
    return {RECIPE_KEY: json.dumps(recipe, sort_keys=True, default=str)}


def rank_metadata(modules: Sequence[Any], fixed_rank: bool = False) -> dict[str, str]:
    """kohya's ss_network_dim/ss_network_alpha (what galleries show as a file's rank and alpha) for
    written LoRA modules: one value, or "Dynamic" as kohya's resize writes when ranks differ. 3x3
    convs are left out (kohya records them as conv_dim). `fixed_rank`: one rank was asked for (a
    resize): the file's rank is the largest written, even where a module came out smaller (one
    that learned nothing keeps rank 1), with alpha at the modules' one scale."""
    linear = [m for m in modules if m.down.dim() == 2 or tuple(m.down.shape[2:]) == (1, 1)] or list(modules)
    ranks = {m.rank for m in linear}
    alphas = {float(m.rank if m.alpha is None else m.alpha) for m in linear}
    if fixed_rank and len(ranks) > 1:
        top = max(ranks)
        scales = {round((m.rank if m.alpha is None else m.alpha) / m.rank, 9) for m in linear}
        return {"ss_network_dim": str(top), "ss_network_alpha": str(scales.pop() * top) if len(scales) == 1 else "Dynamic"}
    return {"ss_network_dim": str(ranks.pop()) if len(ranks) == 1 else "Dynamic",
            "ss_network_alpha": str(alphas.pop()) if len(alphas) == 1 else "Dynamic"}


def _input_name(path: str | Path) -> str:
    return Path(path).name


def describe_inputs(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Name and size of each input, for the recipe."""
    return [{"file": _input_name(p), "size": Path(p).stat().st_size} for p in paths]


@contextmanager
def atomic_path(final: Path, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside `final`, renamed onto it on success and removed on any failure."""
    fd, tmp_name = temp_beside(final, f"{suffix}.tmp")  # the permissions of a new file, not 0600
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def dtype_code(dtype: torch.dtype) -> str:
    """The safetensors dtype code of a torch dtype."""
    if dtype not in _DTYPES:
        raise ToolError(f"dtype {dtype} cannot be stored in safetensors")
    return _DTYPES[dtype]


def spec_nbytes(dtype: torch.dtype, shape: Sequence[int]) -> int:
    """Bytes of a tensor of this dtype and shape."""
    return dtype.itemsize * math.prod(shape)


class StreamingWriter:
    """Writes a safetensors file one tensor at a time: the header is fixed up front from the specs."""

    def __init__(self, handle: IO[bytes], specs: Sequence[tuple[str, torch.dtype, tuple[int, ...]]],
                 metadata: dict[str, str] | None = None) -> None:
        self._handle = handle
        self._order = [name for name, _, _ in specs]
        self._specs = {name: (dtype, tuple(shape)) for name, dtype, shape in specs}
        if len(self._specs) != len(self._order):
            raise ToolError("duplicate tensor names in output")
        header: dict[str, Any] = {}
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        offset = 0
        for name, dtype, shape in specs:
            size = spec_nbytes(dtype, shape)
            header[name] = {"dtype": dtype_code(dtype), "shape": list(shape), "data_offsets": [offset, offset + size]}
            offset += size
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)
        self._kernel_copy = hasattr(os, "copy_file_range")
        self._write_all(memoryview(len(raw).to_bytes(8, "little")))
        self._write_all(memoryview(raw))
        self._next = 0

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write the next tensor; names must come in the order of the specs, with their dtype/shape."""
        if self._next >= len(self._order) or self._order[self._next] != name:
            raise ToolError(f"internal: tensor {name!r} written out of order")
        dtype, shape = self._specs[name]
        if tensor.dtype != dtype or tuple(tensor.shape) != shape:
            raise ToolError(f"internal: tensor {name!r} is {tensor.dtype}{list(tensor.shape)}, "
                            f"declared {dtype}{list(shape)}")
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        if flat.numel():
            self._write_all(memoryview(flat.view(torch.uint8).numpy().data))
        self._next += 1

    def copy(self, name: str, source: IO[bytes], start: int, end: int) -> None:
        """Write the next tensor as the bytes `start:end` of the open file `source` (an unchanged
        tensor of an input): copied by the kernel (copy_file_range) where it can, else in chunks,
        without ever holding the tensor in memory."""
        if self._next >= len(self._order) or self._order[self._next] != name:
            raise ToolError(f"internal: tensor {name!r} written out of order")
        if end - start != spec_nbytes(*self._specs[name]):
            raise ToolError(f"internal: tensor {name!r} is {end - start} bytes, declared "
                            f"{spec_nbytes(*self._specs[name])}")
        self._handle.flush()
        done = _kernel_copy(source, self._handle, start, end) if self._kernel_copy else 0
        if done < 0:
            self._kernel_copy = False
            done = 0
        position = start + done
        while position < end:
            source.seek(position)
            chunk = source.read(min(end - position, _CHUNK))
            if not chunk:
                raise AdapterFileError(getattr(source, "name", "input"), "file is shorter than its header says",
                                       key=name)
            self._write_all(memoryview(chunk))
            position += len(chunk)
        self._next += 1

    def _write_all(self, data: memoryview) -> None:
        while data:  # an unbuffered (raw) handle may write less than asked
            written = self._handle.write(data)
            data = data[written if written is not None else len(data):]

    def close(self) -> None:
        """Check that every declared tensor was written."""
        if self._next != len(self._order):
            raise ToolError(f"internal: {len(self._order) - self._next} tensors were never written")



_CHUNK = 16 << 20


def _kernel_copy(source: IO[bytes], target: IO[bytes], start: int, end: int) -> int:
    """Bytes copied from `source` at `start` to `target`'s position by os.copy_file_range (the data
    never enters this process), up to `end`; -1 when the kernel or file system cannot do it."""
    done = 0
    try:
        source.fileno(), target.fileno()
    except (io.UnsupportedOperation, AttributeError):
        return -1  # not a real file (e.g. BytesIO)
    try:
        while start + done < end:
            n = os.copy_file_range(source.fileno(), target.fileno(), end - start - done, start + done)
            if n == 0:
                break  # the input is shorter than its header; the chunked path says so
            done += n
    except OSError as exc:
        if done or exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF,
                                     errno.EPERM):
            raise
        return -1
    return done


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None) -> None:
    """Write small tensors (a LoRA) atomically, in the given key order."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        writer = StreamingWriter(handle, [(k, t.dtype, tuple(t.shape)) for k, t in tensors.items()], metadata)
        for key, tensor in tensors.items():
            writer.write(key, tensor)
        writer.close()


@dataclass(frozen=True)
class FileLayout:
    """A safetensors file's tensors (dtype, shape, byte range) and metadata, from its header alone."""

    path: Path
    specs: dict[str, tuple[torch.dtype, tuple[int, ...]]]
    ranges: dict[str, tuple[int, int]]  # absolute byte offsets in the file
    metadata: dict[str, str]


def read_layout(path: str | Path) -> FileLayout:
    """Validate and read a safetensors header (no tensor data is read); AdapterFileError if broken."""
    from loraprompt.library.safetensors_header import read_header

    if not Path(path).is_file():
        raise AdapterFileError(path, "no such file")
    header = read_header(path)
    specs = {k: (_torch_dtype(i.dtype, path, k), tuple(i.shape)) for k, i in header.tensors.items()}
    ranges = {k: (header.data_offset + i.start, header.data_offset + i.end) for k, i in header.tensors.items()}
    return FileLayout(Path(path), specs, ranges, dict(header.metadata))


def read_tensor(handle: io.BufferedReader, layout: FileLayout, key: str) -> torch.Tensor:
    """One tensor read with plain file reads into its own buffer (no memory map stays resident)."""
    dtype, shape = layout.specs[key]
    start, end = layout.ranges[key]
    buf = bytearray(end - start)
    handle.seek(start)
    if handle.readinto(buf) != len(buf):
        raise AdapterFileError(layout.path, "file is shorter than its header says", key=key)
    if not buf:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(buf, dtype=dtype).reshape(shape)


_FROM_CODE = {code: dtype for dtype, code in _DTYPES.items()}


def _torch_dtype(code: str, path: str | Path, key: str) -> torch.dtype:
    if code not in _FROM_CODE:
        raise AdapterFileError(path, f"unsupported dtype {code}", key=key)
    return _FROM_CODE[code]


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and metadata of a small safetensors file (a LoRA), in file key order; the header
    is validated first, as for read_adapter (safetensors accepts e.g. a name given twice)."""
    from safetensors import safe_open

    from loraprompt.library.safetensors_header import read_header

    read_header(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except _READ_ERRORS as exc:
        raise AdapterFileError(path, f"not a readable safetensors file ({exc})") from exc


class Progress:
    """A minimal progress bar on stderr. Redrawn in place on a terminal; elsewhere (a log file, a
    pipe) one line at each quarter, so logs get a few lines instead of a hundred carriage returns."""

    def __init__(self, total: int, label: str, enabled: bool = True) -> None:
        self.total = max(total, 1)
        self.label = label
        self.enabled = enabled
        self.done = 0
        self._last = -1
        isatty = getattr(sys.stderr, "isatty", None)
        self._terminal = bool(isatty and isatty())

    def update(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        pct = min(100, self.done * 100 // self.total)
        if not self._terminal:
            if pct // 25 > self._last // 25 or self._last < 0:
                self._last = pct
                sys.stderr.write(f"{self.label}: {pct}% ({self.done}/{self.total})\n")
                sys.stderr.flush()
            return
        if pct != self._last:
            self._last = pct
            bar = "#" * (pct // 4)
            sys.stderr.write(f"\r{self.label} [{bar:<25}] {pct:3d}%")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self._last >= 0 and self._terminal:
            sys.stderr.write("\n")
            sys.stderr.flush()
