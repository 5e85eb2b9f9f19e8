"""Key maps: which module of the loaded model an adapter module's `path` targets.

Contract (used by the patcher, the tools and the A1111 glue):
    keymap = build_keymap(component, module_names)   # names from torch_module.named_modules()
    target = keymap.lookup(path)                     # Target | None

The first version below matches a path only against the model's own names spelled kohya-style;
the formats work replaces it with literal tables (diffusers <-> LDM/SGM, transformers 4/5,
OpenCLIP) plus one generator.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    """A weight of the loaded model: `module` is a dotted name from named_modules(), `param` the
    parameter to patch ("weight" unless the model fuses it, e.g. OpenCLIP's "in_proj_weight"),
    `rows` a (start, stop) slice of that parameter's first dimension when several adapter modules
    share one fused parameter (q/k/v in in_proj_weight), else None."""

    module: str
    param: str = "weight"
    rows: tuple[int, int] | None = None


@dataclass(frozen=True)
class KeyMap:
    component: str
    targets: dict[str, Target]

    def lookup(self, path: str) -> Target | None:
        return self.targets.get(path)


def build_keymap(component: str, module_names: Iterable[str]) -> KeyMap:
    targets = {name.replace(".", "_"): Target(name) for name in module_names if name}
    return KeyMap(component, targets)
