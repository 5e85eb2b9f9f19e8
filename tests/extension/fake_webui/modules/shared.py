"""Stand-in for modules/shared.py (names from A1111 v1.10.1; see modules/__init__.py)."""

from types import SimpleNamespace

from modules import options

cmd_opts = SimpleNamespace(lora_dir=None, lyco_dir_backcompat=None, no_hashing=False)
options_templates = {}
opts = options.Options(options_templates, set())  # one dict, as shared_init.py:18-19 makes it
sd_model = None
options_section = options.options_section
OptionInfo = options.OptionInfo
