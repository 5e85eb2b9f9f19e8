"""Where the Patcher's backups live and how they follow the weights.

A backup is an exact copy of a weight (and its bias) taken before the first write. On a GPU it lives
on the card or in pinned host memory (`backups=` "device", "host" or "auto", decided weight by
weight against `reserve_mb` of free memory), is counted by location, cast where it lives when the
weight's dtype changes, and dropped when the weight is changed outside the patcher. Running out of
device memory while applying becomes a PatchError saying how much was needed and which setting to
change. `Backups` is a mixin of `loraprompt.patcher.Patcher`, which owns the state it uses."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from loraprompt.errors import PatchError
from loraprompt.plan import Key, Plan, SyncReport

MiB = 2**20
BACKUPS = ("auto", "device", "host")
# torch >= 2.5 names it torch.OutOfMemoryError; A1111's torch 2.1 only torch.cuda.OutOfMemoryError
OutOfMemoryError: type[Exception] = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError

if TYPE_CHECKING:
    from torch import Tensor

    from loraprompt.cache import DeltaCache


class Backups:
    """The backup storage of `Patcher` (see its docstring for `backups=` and `reserve_mb`)."""

    backups: str
    reserve_bytes: int
    _pin: bool
    _notes: list[Any]
    _room: dict[torch.device, int]
    _deltas: DeltaCache
    _params: dict[Key, tuple[Tensor, Tensor | None]]
    _backups: dict[Key, tuple[Tensor, Tensor | None]]
    _versions: dict[Key, tuple[int, int]]
    _where: dict[Key, torch.device]
    _applied: Plan
    _bytes_stale: bool

    if TYPE_CHECKING:
        def _param(self, key: Key, fresh: bool = False) -> tuple[Tensor, Tensor | None]: ...

    @property
    def backup_nbytes(self) -> int:
        """Bytes held by backups (exactly the touched weights)."""
        return sum(t.numel() * t.element_size() for pair in self._backups.values() for t in pair if t is not None)

    @property
    def backup_bytes(self) -> dict[str, int]:
        """Bytes of backups on a GPU ("device") and in CPU memory ("host")."""
        out = {"device": 0, "host": 0}
        for pair in self._backups.values():
            for t in pair:
                if t is not None:
                    out["host" if t.device.type == "cpu" else "device"] += t.numel() * t.element_size()
        return out

    def _check_versions(self, report: SyncReport) -> None:
        """Follow weights cast since our last write (the backups are cast where they live) or
        moved to another device (the backups stay where they are: restoring copies across); drop
        the backups of weights written or replaced by someone else (they become the new base)."""
        stale = []
        for key, (w_backup, b_backup) in list(self._backups.items()):
            old = self._params[key]
            weight, bias = self._param(key, fresh=True)
            replaced = old[0] is not weight or old[1] is not bias  # new parameters: a new model
            if not replaced and w_backup.dtype != weight.dtype:
                self._bytes_stale = True
                self._backups[key] = (self._cast(w_backup, weight.dtype),
                                      None if b_backup is None or bias is None else self._cast(b_backup, bias.dtype))
                self._versions[key] = _versions(weight, bias)
                self._deltas.clear()  # weight-dependent deltas were computed from the old values
            elif replaced or _versions(weight, bias) != self._versions.get(key):
                if not replaced and self._where.get(key) != weight.device:
                    # moved by a torch that counts the move as a write: the values came along
                    self._where[key] = weight.device
                    self._versions[key] = _versions(weight, bias)
                    continue
                stale.append(key)
                self._bytes_stale = True
                del self._backups[key], self._versions[key]
                self._applied.pop(key, None)
        if stale:
            from loraprompt.diagnostics import Diagnostic

            self._deltas.clear()  # IA3, GLoRA, OFT and DoRA deltas were computed from the old base

            report.diagnostics.append(Diagnostic("lora-model-changed", severity="info", message=(
                f"{len(stale)} weights were changed outside the patcher (e.g. {'.'.join(stale[0])}); "
                "their backups were dropped and their current values are the new base")))


    def _backup_of(self, t: Tensor) -> Tensor:
        """A copy of `t` where `backups` says: on its device, or in (pinned) host memory."""
        if t.device.type == "cpu":
            return t.detach().clone()
        if self.backups == "device" or (self.backups == "auto" and self._has_room(t)):
            try:
                return t.detach().clone()
            except OutOfMemoryError:
                if self.backups == "device":
                    raise
        return self._host_copy(t)

    def _has_room(self, t: Tensor) -> bool:
        """Whether a device backup of `t` leaves `reserve_mb` free (free memory is asked once per
        device per sync, then counted down)."""
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
                self._notes.append(Diagnostic("lora-backups-pageable", severity="warning", message=(
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

    def _out_of_memory(self, changed: list[Key], plan: Plan, exc: BaseException) -> PatchError:
        """A PatchError saying how much device memory the sync needed and what to change."""
        device_backups = scratch = factors = 0
        where = None
        for key in changed:
            weight, _ = self._param(key)
            where = where or str(weight.device)
            on_host = weight.device.type != "cpu" and self.backups == "host"
            if key not in self._backups and not on_host:
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
    """The tensors' in-place write counters."""
    return weight._version, -1 if bias is None else bias._version
