"""File hashes as Automatic1111 and Civitai use them, both computed in one read of the file.

- `sha256`: the whole file; `autov2` is its first 10 hex digits (Civitai's lookup key).
- `tensor_sha256`: for `.safetensors`, the bytes after the 8-byte length and the JSON header
  (kohya's addnet hash, A1111's LoRA hash); `autov3` / `a1111_short` are its first 12 hex digits.
- `a1111`: the hash A1111 writes in `Lora hashes` (tensor data for safetensors, whole file
  otherwise); `a1111_short` is its first 12 hex digits.

Results are cached in memory by the resolved path and the file's `file_version` (size, mtime, inode,
ctime), so a file replaced between two calls is hashed again, never served stale, even when the new
file has the old one's size and mtime (`rsync -a`, `cp -p`).
"""

from __future__ import annotations

import hashlib
import os
import struct
import threading
from pathlib import Path

from loraprompt.errors import AdapterFileError

CHUNK = 1 << 20
Version = tuple[int, int, int, int]
HashKey = tuple[str, int, int, int, int]


def file_version(st: os.stat_result) -> Version:
    """(size, mtime_ns, inode, ctime_ns): what identifies one version of a file's content. Size and
    mtime alone miss a file replaced by one of the same size with the old mtime kept (`rsync -a`
    renames a new file over it: a new inode; `cp -p` rewrites it in place then sets the old mtime
    back, which changes the ctime: no user can set that). On Windows the ctime is the creation time,
    and the inode the file index: still a new version for a renamed file, and merely conservative."""
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


def stat_key(path: str | Path) -> HashKey:
    """(resolved path, *`file_version`): the identity a cached hash is valid for."""
    p = Path(path)
    return (str(p.resolve()), *file_version(p.stat()))


class HashCache:
    """Thread-safe in-memory map from `stat_key` to hashes."""

    def __init__(self) -> None:
        self._values: dict[HashKey, dict[str, str | None]] = {}
        self._lock = threading.Lock()

    def get(self, key: HashKey) -> dict[str, str | None] | None:
        with self._lock:
            value = self._values.get(key)
        return dict(value) if value is not None else None

    def seed(self, key: HashKey, value: dict[str, str | None]) -> None:
        """Store the hashes of the file version `key`."""
        with self._lock:
            self._values[key] = dict(value)

    def __len__(self) -> int:
        return len(self._values)


DEFAULT_CACHE = HashCache()


def _digest_file(path: Path) -> tuple[dict[str, str | None], os.stat_result, os.stat_result]:
    """Read the file once and return its hashes plus the stat before and after the read."""
    is_safetensors = path.suffix.lower() == ".safetensors"
    whole = hashlib.sha256()
    tensors = hashlib.sha256() if is_safetensors else None
    with open(path, "rb") as f:
        before = os.fstat(f.fileno())
        skip = 0
        if is_safetensors:
            head = f.read(8)
            whole.update(head)
            if len(head) < 8:
                raise AdapterFileError(path, f"file is {len(head)} bytes, too short for a safetensors header")
            (n,) = struct.unpack("<Q", head)
            if n > before.st_size - 8:
                raise AdapterFileError(path, f"header length {n} is larger than the file ({before.st_size} bytes)")
            skip = n
        while True:
            chunk = f.read(CHUNK)
            if not chunk:
                break
            whole.update(chunk)
            if tensors is not None:
                if skip >= len(chunk):
                    skip -= len(chunk)
                    continue
                tensors.update(memoryview(chunk)[skip:])
                skip = 0
        after = os.fstat(f.fileno())
    full = whole.hexdigest()
    tensor_hex = tensors.hexdigest() if tensors is not None else None
    a1111 = tensor_hex if tensor_hex is not None else full
    out: dict[str, str | None] = {
        "sha256": full,
        "autov2": full[:10],
        "tensor_sha256": tensor_hex,
        "autov3": tensor_hex[:12] if tensor_hex is not None else None,
        "a1111": a1111,
        "a1111_short": a1111[:12],
    }
    return out, before, after


def file_hashes(path: str | Path, cache: HashCache | None = DEFAULT_CACHE) -> dict[str, str | None]:
    """Hashes of `path` (see the module docstring), computed in one read and cached by stat.

    Raises AdapterFileError for a missing file, a directory or a truncated safetensors header.
    """
    p = Path(path)
    try:
        key = stat_key(p)
    except OSError as exc:
        raise AdapterFileError(p, f"cannot stat: {exc.strerror or exc}") from exc
    if p.is_dir():
        raise AdapterFileError(p, "is a directory, not a file")
    if cache is not None:
        hit = cache.get(key)
        if hit is not None:
            return hit
    try:
        value, before, after = _digest_file(p)
    except OSError as exc:
        raise AdapterFileError(p, f"cannot read: {exc.strerror or exc}") from exc
    version = file_version(before)
    if cache is not None and version == file_version(after) and version == key[1:]:
        cache.seed(key, value)
    return value
