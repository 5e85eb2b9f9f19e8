"""Living next to A1111's built-in Lora extension: exactly one handler ever patches the weights.

The decision:
- With the option `loraprompt_handle_lora_tags` on (default), loraprompt is the handler of
  `<lora:...>` and `<lyco:...>`. A1111 calls `before_ui` callbacks in reverse order, so the
  built-in registers last there; loraprompt therefore (re)claims both names when the app starts and
  before every generation (which also undoes loractl re-registering its own handler).
- The built-in's torch hooks stay installed (they cannot be removed from outside), but with its
  handler unregistered its `networks.loaded_networks` stays empty and the hooks patch nothing.
- If something still drives the built-in (an extension calling `networks.load_networks`, such as
  loractl or lora-block-weight), loraprompt restores its own weights and steps back for that
  generation, with a message under the image: two handlers never patch the same weights.
- With the option off, loraprompt registers nothing; the built-in handles the tags and
  loraprompt's gallery tab only inserts them.
"""

from __future__ import annotations

import sys
from typing import Any

from modules import extra_networks

TAG_TYPES = ("lora", "lyco")
BUILTIN_MODULE = "networks"  # extensions-builtin/Lora/networks.py, imported under this bare name


def builtin_networks() -> Any:
    """The built-in Lora extension's `networks` module when it is loaded, else None."""
    module = sys.modules.get(BUILTIN_MODULE)
    return module if module is not None and hasattr(module, "loaded_networks") else None


def builtin_enabled() -> bool:
    """True when A1111's built-in Lora extension is loaded in this process."""
    return builtin_networks() is not None


def builtin_busy() -> list[str]:
    """Networks the built-in has loaded (its hooks patch them on the next forward); [] when idle."""
    networks = builtin_networks()
    if networks is None:
        return []
    return [str(getattr(n, "name", n)) for n in list(networks.loaded_networks)]


def claim(handler: Any) -> list[str]:
    """Register `handler` for `lora` and `lyco`; return the handlers it displaced."""
    displaced = []
    current = extra_networks.extra_network_registry.get(handler.name)
    if current is not handler:
        if current is not None:
            displaced.append(type(current).__module__ + "." + type(current).__name__)
        extra_networks.register_extra_network(handler)
    for alias in TAG_TYPES:
        if alias == handler.name:
            continue
        if extra_networks.extra_network_registry.get(alias) not in (None, handler):
            displaced.append(f"{alias}: {type(extra_networks.extra_network_registry[alias]).__name__}")
            del extra_networks.extra_network_registry[alias]
        if extra_networks.extra_network_aliases.get(alias) is not handler:
            extra_networks.register_extra_network_alias(handler, alias)
    return displaced


def release(handler: Any) -> None:
    """Unregister `handler` from every name it holds (script reload)."""
    for name, obj in list(extra_networks.extra_network_registry.items()):
        if obj is handler:
            del extra_networks.extra_network_registry[name]
    for name, obj in list(extra_networks.extra_network_aliases.items()):
        if obj is handler:
            del extra_networks.extra_network_aliases[name]


NOTICE = (
    "loraprompt handles <lora:...> and <lyco:...> tags. A1111's built-in Lora extension is still "
    "enabled: its cards page and API keep working, but it no longer applies LoRAs. Extensions that "
    "drive the built-in (loractl, lora-block-weight) are inactive; write their features as tag "
    "arguments instead (sched=, unet=0@0,1@0.5, lbw=, start=, stop=, hr=). To go back, turn off "
    "'Handle <lora:...> tags with loraprompt' in Settings > loraprompt and restart."
)
