"""Run by Automatic1111 before it loads the extension: installs only what is missing.

A1111 already ships all of these (lark==1.1.2, numpy==1.26.2, safetensors==0.4.2, torch), so on a
normal install nothing happens. Nothing is ever upgraded, and diffusers is never installed.
The list mirrors pyproject.toml's `dependencies` plus the `engine` extra (a test checks it).
"""

from __future__ import annotations

import launch

REQUIREMENTS = (
    ("lark", "lark>=1.1.2"),
    ("torch", "torch>=2.1"),
    ("safetensors", "safetensors>=0.4.2"),
    ("numpy", "numpy>=1.26"),
)

for package, spec in REQUIREMENTS:
    if not launch.is_installed(package):
        launch.run_pip(f'install "{spec}"', f"loraprompt requirement: {spec}")
