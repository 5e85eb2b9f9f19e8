"""Where the Patcher's backups live and how they follow the weights.

A backup is an exact copy of a weight (and its bias) taken before the first write. On a GPU it lives
on the card or in pinned host memory (`policy` "device", "host" or "auto", decided weight by weight
against `reserve_bytes` of free memory), is counted by location, cast where it lives when the
weight's dtype changes, and dropped when the weight is changed outside the patcher. Running out of
device memory while applying becomes a PatchError saying how much was needed and which setting to
change. `BackupStore` owns all of this state; `loraprompt.patcher.Patcher` holds one."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch

from loraprompt.errors import PatchError
from loraprompt.plan import Key, Plan

MiB = 2**20
BACKUPS = ("auto", "device", "host")
# torch >= 2.5 names it torch.OutOfMemoryError; A1111's torch 2.1 only torch.cuda.OutOfMemoryError
OutOfMemoryError: type[Exception] = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError

if TYPE_CHECKING:
    from torch import Tensor

Pair = tuple["Tensor", "Tensor | None"]


def checked_policy(policy: str) -> str:
    if policy not in BACKUPS:
        raise ValueError(f"backups must be one of {', '.join(BACKUPS)}, not {policy!r}")
    return policy


class BackupStore:
    """Weight key -> exact copies of its (weight, bias), with the weights' write counters and
    devices at our last write (see `Patcher` for `backups=` and `reserve_mb`)."""

    def __init__(self, policy: str, reserve_bytes: int) -> None:
        self.policy = checked_policy(policy)
        self.reserve_bytes = reserve_bytes
        self.notes: list[Any] = []  # diagnostics for the next sync report
        self._pairs: dict[Key, Pair] = {}
        self._versions: dict[Key, tuple[int, int]] = {}
        self._where: dict[Key, torch.device] = {}  # the weight's device at our last write
        self._pin = True  # pinned host memory works until refused once
        self._room: dict[torch.device, int] = {}  # free device memory left, counted down within a sync
        self._bytes = {"device": 0, "host": 0}
        self._stale = False  # backups taken, cast or dropped since _bytes was counted

    def __contains__(self, key: Key) -> bool:
        return key in self._pairs

    def __iter__(self) -> Iterator[Key]:
        return iter(list(self._pairs))

    def __len__(self) -> int:
        return len(self._pairs)

    def get(self, key: Key) -> Pair | None:
        return self._pairs.get(key)

    def items(self) -> list[tuple[Key, Pair]]:
        return list(self._pairs.items())

    @property
    def nbytes(self) -> int:
        """Bytes held by backups (exactly the touched weights)."""
        return sum(t.numel() * t.element_size() for pair in self._pairs.values() for t in pair if t is not None)

    def by_place(self) -> dict[str, int]:
        """Bytes of backups on a GPU ("device") and in CPU memory ("host"), counted again only
        after backups were taken, cast or dropped."""
        if self._stale:
            self._bytes, self._stale = {"device": 0, "host": 0}, False
            for pair in self._pairs.values():
                for t in pair:
                    if t is not None:
                        self._bytes["host" if t.device.type == "cpu" else "device"] += t.numel() * t.element_size()
        return dict(self._bytes)

    @property
    def changed(self) -> bool:
        """Whether backups were taken, cast or dropped since `by_place` last counted them."""
        return self._stale

    def take(self, key: Key, weight: Tensor, bias: Tensor | None) -> Pair:
        """The backup of `key`, taken now if there is none (of `bias` too when given and not held)."""
        pair = self._pairs.get(key)
        if pair is None:
            pair = self._pairs[key] = (self._copy_of(weight), None)
            self._stale = True
        if bias is not None and pair[1] is None:
            pair = self._pairs[key] = (pair[0], self._copy_of(bias))
            self._stale = True
        return pair

    def written(self, key: Key, weight: Tensor, bias: Tensor | None) -> None:
        """Record that we just wrote `key` (so a later write by someone else can be told apart)."""
        self._versions[key] = _versions(weight, bias)
        self._where[key] = weight.device

    def drop(self, key: Key) -> None:
        del self._pairs[key], self._versions[key]
        self._stale = True

    def clear(self) -> None:
        self._pairs.clear()
        self._versions.clear()
        self._where.clear()
        self._stale = True

    def new_sync(self) -> None:
        """Ask the devices for their free memory again at the next device backup."""
        self._room.clear()

    def follow(self, current: Callable[[Key], tuple[Pair, Pair]], diagnostics: list[Any]) -> tuple[list[Key], bool]:
        """Follow weights cast since our last write (the backups are cast where they live) or
        moved to another device (the backups stay where they are: restoring copies across); drop
        the backups of weights written or replaced by someone else (they become the new base).
        `current(key)`: (the parameters we last wrote, the module's parameters now). Returns (the
        keys dropped, whether any backup was cast); a dropped backup is reported in `diagnostics`."""
        stale, cast = [], False
        for key, (w_backup, b_backup) in list(self._pairs.items()):
            old, (weight, bias) = current(key)
            replaced = old[0] is not weight or old[1] is not bias  # new parameters: a new model
            if not replaced and w_backup.dtype != weight.dtype:
                self._pairs[key] = (self._cast(w_backup, weight.dtype),
                                    None if b_backup is None or bias is None else self._cast(b_backup, bias.dtype))
                self._versions[key] = _versions(weight, bias)
                cast = self._stale = True
            elif replaced or _versions(weight, bias) != self._versions.get(key):
                if not replaced and self._where.get(key) != weight.device:
                    # moved by a torch that counts the move as a write: the values came along
                    self.written(key, weight, bias)
                    continue
                stale.append(key)
                self.drop(key)
        if stale:
            from loraprompt.diagnostics import Diagnostic

            diagnostics.append(Diagnostic("lora-model-changed", severity="info", message=(
                f"{len(stale)} weights were changed outside the patcher (e.g. {'.'.join(stale[0])}); "
                "their backups were dropped and their current values are the new base")))
        return stale, cast

    def _copy_of(self, t: Tensor) -> Tensor:
        """A copy of `t` where the policy says: on its device, or in (pinned) host memory."""
        if t.device.type == "cpu":
            return t.detach().clone()
        if self.policy == "device" or (self.policy == "auto" and self._has_room(t)):
            try:
                return t.detach().clone()
            except OutOfMemoryError:
                if self.policy == "device":
                    raise
        return self._host_copy(t)

    def _has_room(self, t: Tensor) -> bool:
        """Whether a device backup of `t` leaves `reserve_bytes` free (free memory is asked once
        per device per sync, then counted down)."""
        if t.device.type != "cuda":
            return True
        room = self._room.get(t.device)
        if room is None:
            free, _ = torch.cuda.mem_get_info(t.device)
            room = free - self.reserve_bytes
        nbytes = t.numel() * t.element_size()
        self._room[t.device] = room - nbytes if room >= nbytes else room
        return room >= nbytes

    def _host_copy(self, t: Tensor) -> Tensor:
        """`t` copied into pinned host memory without blocking; pageable (and a diagnostic, once)
        when pinning is refused (no pinned allocator, or the OS limit on locked memory)."""
        buf = None
        if self._pin:
            try:
                buf = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=True)
            except RuntimeError as exc:
                from loraprompt.diagnostics import Diagnostic

                self._pin = False
                self.notes.append(Diagnostic("lora-backups-pageable", severity="warning", message=(
                    f"pinned host memory was refused ({exc}); LoRA backups are kept in ordinary host "
                    "memory, so restoring a weight waits for the copy")))
        if buf is None:
            buf = torch.empty(t.shape, dtype=t.dtype, device="cpu")
        buf.copy_(t, non_blocking=buf.is_pinned())
        return buf

    def _cast(self, backup: Tensor, dtype: torch.dtype) -> Tensor:
        """A backup cast to the weight's new dtype, where it lives."""
        cast = backup.to(dtype)
        return self._host_copy(cast) if backup.device.type == "cpu" and backup.is_pinned() else cast

    def out_of_memory(self, changed: list[Key], plan: Plan, exc: BaseException,
                      param: Callable[[Key], Pair]) -> PatchError:
        """A PatchError saying how much device memory a sync writing `changed` needed (`param`:
        key -> its (weight, bias)) and what to change."""
        device_backups = scratch = factors = 0
        where = None
        for key in changed:
            weight = param(key)[0]
            where = where or str(weight.device)
            on_host = weight.device.type != "cpu" and self.policy == "host"
            if key not in self._pairs and not on_host:
                device_backups += weight.numel() * weight.element_size()
            if weight.dtype != torch.float32:
                scratch = max(scratch, weight.numel() * 4)
            for module, _, _ in plan.get(key, ()):
                factors += sum(t.numel() * 4 for k, t in module.tensors.items() if k in ("up", "down"))
        needed = device_backups + scratch + factors
        return PatchError(
            f"out of memory on {where} while applying LoRAs; the model is as it was. This sync needed "
            f"about {needed / MiB:.0f} MiB more there ({device_backups / MiB:.0f} MiB of backups, "
            f"{scratch / MiB:.0f} MiB of float32 scratch, {factors / MiB:.0f} MiB of LoRA factors). Keep "
            "the backups in host memory (Patcher(backups='host'); in A1111: Settings > loraprompt > "
            "'Where LoRA backups live' = host; in the web UI: --backups host), or use fewer or "
            f"lower-rank LoRAs. ({exc})".replace("\n", " ")
        )


def _versions(weight: Tensor, bias: Tensor | None) -> tuple[int, int]:
    """The tensors' in-place write counters. Inference tensors (a model loaded under
    torch.inference_mode, as ComfyUI does) keep none: -2, so a write by someone else to such a
    weight is not seen, only a replaced parameter."""
    return _version(weight), -1 if bias is None else _version(bias)


def _version(t: Tensor) -> int:
    return -2 if t.is_inference() else t._version
