"""Which Patcher has each weight patched now, across every Patcher of the process.

Two Patchers on one model cannot both be right: each takes the other's writes for the base (a
weight that changed behind a patcher's back becomes its new base), so a LoRA applied by both is
applied twice and neither restore gives the original back. A second Patcher is easy to make by
mistake (a tool that makes one per call and keeps weights applied; two diffusers pipelines built
from one set of components), so a weight another live Patcher has patched is refused by name
before anything is written. Claims are taken when a sync writes a weight and dropped when it is
restored, so Patchers that take turns (each restoring before the next applies) are fine.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

from torch import Tensor

from loraprompt.errors import PatchError
from loraprompt.plan import Key

_LOCK = threading.Lock()
_OWNERS: dict[int, tuple[weakref.ref[Tensor], weakref.ref[Any]]] = {}  # id(weight) -> (weight, its Patcher)


class Claims:
    """The weights one Patcher has patched now (by key), registered process-wide."""

    def __init__(self, patcher: Any) -> None:
        self._patcher = weakref.ref(patcher)
        self._ids: dict[Key, int] = {}

    def check(self, weights: Mapping[Key, Tensor]) -> None:
        """PatchError naming the first of `weights` (about to be written) that another live
        Patcher has patched now."""
        me = self._patcher()
        with _LOCK:
            for key, weight in weights.items():
                found = _OWNERS.get(id(weight))
                if found is None or found[0]() is not weight:
                    continue
                other = found[1]()
                if other is not None and other is not me:
                    raise PatchError(
                        f"{'.'.join(key)} is patched by another Patcher now: two Patchers on one model take each "
                        "other's writes for the base and the model cannot be restored. Use one Patcher per model "
                        "(loraprompt.integrations.diffusers.patcher_for(pipe) for a pipeline), or restore() the "
                        "other one first")

    def update(self, written: Iterable[Key], applied: Mapping[Key, Any], params: Mapping[Key, tuple[Tensor, Any]]) -> None:
        """After a sync: claim the `written` keys now in `applied` (their weight is `params[key][0]`),
        drop the others. A key claimed before with the same weight costs two lookups (a switch
        between LoRAs on the same modules rewrites every weight and claims none anew)."""
        me, ids = self._patcher(), self._ids
        with _LOCK:
            for key in written:
                if key not in applied:
                    self._drop(key)
                    continue
                weight = params[key][0]
                if ids.get(key) == id(weight):
                    continue
                self._drop(key)
                ids[key] = id(weight)
                _OWNERS[id(weight)] = (weakref.ref(weight), weakref.ref(me))

    def drop(self, keys: Iterable[Key]) -> None:
        """Weights this Patcher no longer has patched (found changed behind its back)."""
        with _LOCK:
            for key in keys:
                self._drop(key)

    def clear(self) -> None:
        """Every claim of this Patcher (its model was replaced or forgotten)."""
        with _LOCK:
            for key in list(self._ids):
                self._drop(key)

    def _drop(self, key: Key) -> None:
        ident = self._ids.pop(key, None)
        if ident is None:
            return
        found = _OWNERS.get(ident)
        if found is not None and found[1]() in (self._patcher(), None):
            del _OWNERS[ident]
