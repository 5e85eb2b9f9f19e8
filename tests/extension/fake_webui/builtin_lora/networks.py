"""Stand-in for extensions-builtin/Lora/networks.py (A1111 v1.10.1): `loaded_networks`, which the
built-in's torch hooks apply on the next forward, and `load_networks`, which its handler and
extensions such as loractl and lora-block-weight call to fill it."""

loaded_networks = []
extra_network_lora = None  # set by scripts/lora_script.py's before_ui: the built-in's `lora` handler


def load_networks(names, te_multipliers=None, unet_multipliers=None, dyn_dims=None):
    loaded_networks.clear()
    loaded_networks.extend(names)
