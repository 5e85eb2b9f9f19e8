"""Stand-in for extensions-builtin/Lora/networks.py (A1111 v1.10.1): the state other extensions
(loractl, lora-block-weight) drive. `network_apply_weights` stands for the torch hook the built-in
installs: on a layer's forward it patches the layer when `loaded_networks` is non-empty."""

loaded_networks = []
forwards_that_patched = []


def load_networks(names, te_multipliers=None, unet_multipliers=None, dyn_dims=None):
    loaded_networks.clear()
    loaded_networks.extend(names)


def network_apply_weights(self):
    if loaded_networks:
        forwards_that_patched.append(self)
