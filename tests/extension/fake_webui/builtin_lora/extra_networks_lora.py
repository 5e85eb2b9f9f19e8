"""Stand-in for extensions-builtin/Lora/extra_networks_lora.py and its before_ui registration
(A1111 v1.10.1, scripts/lora_script.py): the built-in `lora` handler."""

import networks
from modules import extra_networks, shared

# scripts/lora_script.py:35-45 registers these at import (the dropdowns' gradio components left out):
# only while the built-in is enabled are they in shared.opts.data_labels
shared.options_templates.update(shared.options_section(("extra_networks", "Extra Networks"), {
    "sd_lora": shared.OptionInfo("None", "Add network to prompt"),
    "lora_preferred_name": shared.OptionInfo("Alias from file", "When adding to prompt, refer to Lora by"),
    "lora_add_hashes_to_infotext": shared.OptionInfo(True, "Add Lora hashes to infotext"),
}))


class ExtraNetworkLora(extra_networks.ExtraNetwork):
    def __init__(self):
        super().__init__("lora")
        self.calls = []

    def activate(self, p, params_list):
        self.calls.append([x.items for x in params_list])
        networks.load_networks([x.positional[0] for x in params_list])

    def deactivate(self, p):
        pass


def before_ui():  # scripts/lora_script.py keeps the handler on the networks module
    networks.extra_network_lora = ExtraNetworkLora()
    extra_networks.register_extra_network(networks.extra_network_lora)
    extra_networks.register_extra_network_alias(networks.extra_network_lora, "lyco")
