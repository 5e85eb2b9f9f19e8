"""Bounded caches: read adapters keyed by file identity, and the patcher's float32 deltas and
low-rank factors."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from loraprompt.adapters.types import Adapter, AdapterModule

MB = 1024 * 1024


def adapter_nbytes(adapter: Adapter) -> int:
    """Bytes held by an adapter's tensors."""
    total = 0
    for module in adapter.modules.values():
        total += sum(t.numel() * t.element_size() for t in module.tensors.values())
        if module.dora_scale is not None:
            total += module.dora_scale.numel() * module.dora_scale.element_size()
    return total


PEFT_CONFIG = "adapter_config.json"  # beside a PEFT save_pretrained file it sets the scale (reader.PEFT_CONFIG_FILE)


def _config_mtime(real: str) -> int:
    try:
        return os.stat(os.path.join(os.path.dirname(real), PEFT_CONFIG)).st_mtime_ns
    except OSError:
        return 0


class AdapterCache:
    """Read adapters, least recently used first out, at most `limit_mb` of tensors; an entry is
    keyed by (real path, inode, size, mtime_ns, and the mtime of an `adapter_config.json` beside
    it), so a file changed or replaced on disk, or its PEFT config edited, is read again."""

    def __init__(self, limit_mb: float = 1024.0, reader: Callable[[str], Adapter] | None = None) -> None:
        self.limit_bytes = int(limit_mb * MB)
        self._reader = reader
        self._entries: OrderedDict[tuple[str, int, int, int, int], tuple[Adapter, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        """Bytes of tensors held now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, path: str | os.PathLike[str]) -> Adapter:
        """The adapter in `path`, from the cache when the file is unchanged."""
        real = os.path.realpath(path)
        stat = os.stat(real)
        key = (real, stat.st_ino, stat.st_size, stat.st_mtime_ns, _config_mtime(real))
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
                return hit[0]
        adapter = self._read(real)
        size = adapter_nbytes(adapter)
        with self._lock:
            for old in [k for k in self._entries if k[0] == real and k != key]:
                self._bytes -= self._entries.pop(old)[1]
            if key not in self._entries:
                self._entries[key] = (adapter, size)
                self._bytes += size
            self._evict()
        return adapter

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def _read(self, path: str) -> Adapter:
        if self._reader is not None:
            return self._reader(path)
        from loraprompt.adapters import read_adapter  # type: ignore[attr-defined]

        return read_adapter(path)  # type: ignore[no-any-return]

    def _evict(self) -> None:
        while self._bytes > self.limit_bytes and self._entries:
            self._bytes -= self._entries.popitem(last=False)[1][1]


class DeltaCache:
    """Float32 tensors per key, at most `limit_mb`. The least recently used go first, but never
    one used in the current `generation` (the patcher bumps it per sync), so a sync bigger than
    the cache keeps what it cached first instead of thrashing."""

    def __init__(self, limit_mb: float) -> None:
        self.limit_bytes = int(limit_mb * MB)
        self.generation = 0
        self._entries: OrderedDict[Hashable, tuple[tuple[Tensor | None, ...], int, int]] = OrderedDict()
        self._bytes = 0
        self.factors_built = 0  # low-rank factor sets made (not found in the cache), for reports and benchmarks

    @property
    def nbytes(self) -> int:
        """Bytes of tensors held now."""
        return self._bytes

    def get(self, key: Hashable) -> tuple[Tensor | None, ...] | None:
        """The cached tensors, or None."""
        hit = self._entries.get(key)
        if hit is None:
            return None
        self._entries[key] = (hit[0], hit[1], self.generation)
        self._entries.move_to_end(key)
        return hit[0]

    def put(self, key: Hashable, *tensors: Tensor | None) -> bool:
        """Keep `tensors` if they fit, evicting entries of older generations; True if kept."""
        size = sum(t.numel() * t.element_size() for t in tensors if t is not None)
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old[1]
        while self._entries and self._bytes + size > self.limit_bytes:
            oldest = next(iter(self._entries.values()))
            if oldest[2] == self.generation:
                break
            self._bytes -= self._entries.popitem(last=False)[1][1]
        if self._bytes + size > self.limit_bytes:
            return False
        self._entries[key] = (tensors, size, self.generation)
        self._bytes += size
        return True

    def discard(self, prefix: tuple[Hashable, ...]) -> None:
        """Drop every entry whose key (a tuple) starts with `prefix`."""
        n = len(prefix)
        for key in [k for k in self._entries if isinstance(k, tuple) and k[:n] == prefix]:
            self._bytes -= self._entries.pop(key)[1]

    def factors(
        self, module: AdapterModule, target: Tensor, device: torch.device | None = None, *, pinned: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor | None] | None:
        """`lowrank_factors(module, target, device)`, kept per device (they are small) while the
        cache has room: a model moved to another device and back finds them again. `pinned`: kept
        in pinned host memory instead (for weights whose backups live there, so the card holds
        neither), to be copied to the device without blocking at each use. The row slices of one
        fused file module (`adapters.slices`: Flux's q/k/v, `linear1`) share one copy of its `down`."""
        where: Hashable = "pinned" if pinned else device or target.device
        build_on = torch.device("cpu") if pinned else device
        key = (module, "factors", where)
        hit = self.get(key)
        parent = module.extra.get("parent") if "rows_of" in module.extra else None
        if parent is None or getattr(module, "dyn", None) is not None:
            if hit is not None:
                assert hit[0] is not None and hit[1] is not None
                return hit[0], hit[1], hit[2]
            found = lowrank_factors(module, target, build_on)
            if found is None:
                return None
            self.factors_built += 1
            if pinned:
                found = _pinned(found[0]), _pinned(found[1]), None if found[2] is None else _pinned(found[2])
            self.put(key, *found)
            return found
        down_key = (parent, "down", where)
        shared = self.get(down_key)
        if hit is not None and shared is not None:
            assert hit[0] is not None and shared[0] is not None
            return hit[0], shared[0], hit[2]
        found = lowrank_factors(module, target, build_on, down=None if shared is None else shared[0])
        if found is None:
            return None
        self.factors_built += 1
        up, down, db = found
        if pinned:
            up, db = _pinned(up), None if db is None else _pinned(db)
            down = _pinned(down) if shared is None else down
        if shared is None:
            self.put(down_key, down)
        self.put(key, up, None, db)  # its down is the shared entry
        return up, down, db

    def clear(self) -> None:
        """Drop every entry."""
        self._entries.clear()
        self._bytes = 0


def lowrank_factors(
    module: AdapterModule, target: Tensor, device: torch.device | None = None, *, down: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor | None] | None:
    """(scale·up, down, Δbias) in float32 on `device` (default: `target`'s; computed on the adapter's device,
    usually the CPU, then copied without blocking) when `module` is the reader's plain
    LoRA (ΔW = scale·up @ down: written with one addmm, no full-size delta), else None; ValueError
    (naming the shapes) when the factors do not fit `target`. `down`: the float32 down factor made
    already (the one a fused module's row slices share), used as it is."""
    import torch

    from loraprompt.adapters.types import AdapterModule

    if not target.is_contiguous():
        return None
    if module.algorithm != "lora" or type(module).delta is not AdapterModule.delta:
        return None  # only the reader's LoRA, whose delta is the shared scale·unit_delta
    if module.dora_scale is not None or "mid" in module.tensors or not {"up", "down"} <= module.tensors.keys():
        return None
    up, file_down = module.tensors["up"], module.tensors["down"]
    dyn = getattr(module, "dyn", None)
    if dyn is not None:
        up, file_down = up[:, :dyn], file_down[:dyn]
    up_cols, down_cols = up[0].numel(), file_down[0].numel()
    if up.shape[0] != target.shape[0] or up_cols != file_down.shape[0] or down_cols != target[0].numel():
        raise ValueError(f"up {(up.shape[0], up_cols)} @ down {(file_down.shape[0], down_cols)} does not fit {tuple(target.shape)}")
    # moved in the file's dtype (half the bytes of float32 for most files), widened and scaled there:
    # on a GPU that is two small kernels instead of a host pass over every factor
    where = device or target.device
    up = to_device(up, where).reshape(up.shape[0], up_cols).to(torch.float32) * module.scale  # never in place: may be the file's own tensor
    if down is None or down.shape != (file_down.shape[0], down_cols):
        down = to_device(file_down, where).reshape(file_down.shape[0], down_cols).to(torch.float32)
    db = module.bias_delta()
    return up, down, None if db is None else to_device(db.to(torch.float32), where)


def _pinned(t: Tensor) -> Tensor:
    try:
        return t.pin_memory()
    except RuntimeError:  # no CUDA, or the driver refused: pageable, copied with a wait
        return t


def to_device(t: Tensor, device: torch.device) -> Tensor:
    """`t` on `device`; a CPU tensor goes through pinned memory without blocking the host (a
    pageable host-to-device copy waits for the device), pageable when pinning is refused."""
    if t.device == device:
        return t
    if t.device.type == "cpu" and device.type == "cuda":
        if t.is_pinned():
            return t.to(device, non_blocking=True)
        try:
            t = t.pin_memory()
        except RuntimeError:
            return t.to(device)
        return t.to(device, non_blocking=True)
    return t.to(device)
