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
- An SD3 model (A1111 v1.10.1 flags it `sd_model.is_sd3`; the built-in maps SD3 LoRAs through the
  model's `diffusers_weight_mapping`) is the built-in's: loraprompt does not patch A1111's MMDiT,
  so while one is loaded it hands `lora`/`lyco` back to the built-in's own handler
  (`networks.extra_network_lora`), says why once, and takes them back when an SD1/SD2/SDXL model
  is loaded. Without the built-in, a tag on an SD3 model gets an error saying to enable it.
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


def builtin_model(sd_model: Any) -> str | None:
    """Why `sd_model` is a model whose LoRAs A1111's built-in applies and loraprompt does not
    (SD3, by A1111's flag or its diffusers weight map), or None for SD1/SD2/SDXL."""
    if sd_model is None:
        return None
    if getattr(sd_model, "is_sd3", False) is True:
        return "the loaded model is SD3"
    if callable(getattr(sd_model, "diffusers_weight_mapping", None)):
        return f"the loaded model ({type(sd_model).__name__}) is one A1111 maps through diffusers names"
    return None


def hand_back_notice(reason: str) -> str:
    """The line shown when the tags go to the built-in for this model."""
    return (f"loraprompt: {reason}; A1111's built-in Lora extension applies <lora:...> tags on it (through its "
            "diffusers key map) and loraprompt does not patch this model, so the built-in handles the tags while it "
            "is loaded. loraprompt takes them back when an SD1/SD2/SDXL model is loaded.")


def unsupported_notice(reason: str) -> str:
    """The error for a tag on such a model when the built-in is disabled."""
    return (f"{reason}, which loraprompt does not patch inside A1111, and A1111's built-in Lora extension (which "
            "applies its LoRAs) is disabled: no LoRA applied. Enable 'Lora' under Extensions > Installed; loraprompt "
            "then hands it the tags while such a model is loaded.")


def hand_back(handler: Any) -> bool:
    """Give `lora`/`lyco` back to the built-in's own handler (A1111 keeps it as
    `networks.extra_network_lora`); True when it was registered again."""
    release(handler)
    builtin = getattr(builtin_networks(), "extra_network_lora", None)
    if builtin is None:
        return False
    extra_networks.register_extra_network(builtin)
    for alias in TAG_TYPES:
        if alias != builtin.name:
            extra_networks.register_extra_network_alias(builtin, alias)
    return True


def clear_builtin() -> None:
    """Empty the built-in's loaded networks (as its handler does for a prompt without tags), so its
    hooks patch nothing once loraprompt handles the tags again."""
    networks = builtin_networks()
    if networks is not None and list(networks.loaded_networks):
        networks.load_networks([])


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
    "enabled: its cards page and API are left to it as they were, but it no longer applies LoRAs. Extensions that "
    "drive the built-in (loractl, lora-block-weight) are inactive; write their features as tag "
    "arguments instead (sched=, unet=0@0,1@0.5, lbw=, start=, stop=, hr=). To go back, turn off "
    "'Handle <lora:...> tags with loraprompt' in Settings > loraprompt and restart."
)
