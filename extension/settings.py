"""loraprompt's options in A1111's Settings, all prefixed `loraprompt_`."""

from __future__ import annotations

from typing import Any

from modules import shared

SECTION = ("loraprompt", "loraprompt")


def options() -> dict[str, Any]:
    """Option key -> OptionInfo (gradio is imported by A1111 already; choices are plain lists)."""
    import gradio as gr

    info = shared.OptionInfo
    return {
        "loraprompt_handle_lora_tags": info(True, "Handle <lora:...> and <lyco:...> tags with loraprompt").info(
            "off: A1111's built-in Lora extension applies them (if enabled); loraprompt's gallery only inserts tags"
        ).needs_restart(),
        "loraprompt_profile": info(
            "loraprompt", "Tag syntax", gr.Radio, {"choices": ["loraprompt", "a1111"]}
        ).info("a1111: exactly A1111's rules (one bad tag drops every LoRA); loraprompt: errors isolated per tag"),
        "loraprompt_family_check": info(True, "Refuse LoRAs made for another model family").info(
            "e.g. an SDXL LoRA on an SD1.5 model; the built-in applied such LoRAs partly and silently"
        ),
        "loraprompt_hashes_in_infotext": info(True, "Add Lora hashes to infotext"),
        "loraprompt_diagnostics_in_infotext": info(True, "Add loraprompt's warnings to infotext").info(
            "they are always shown under the image"
        ),
        "loraprompt_error_popups": info(True, "Show loraprompt's errors as popups").info(
            "an unknown LoRA, a bad number, a LoRA for another model family"
        ),
        "loraprompt_cache_mb": info(1024, "Adapters kept in memory (MB)", gr.Number, {"precision": 0}).needs_restart(),
        "loraprompt_backups": info(
            "auto", "Where LoRA backups live", gr.Radio, {"choices": ["auto", "device", "host"]}
        ).info(
            "the original weights a LoRA replaces, copied back when it is removed. auto: on the GPU while it "
            "keeps 1 GB free, else in pinned RAM; host: always in RAM (least VRAM: SDXL needs ~4.8 GB "
            "less); device: always on the GPU (fastest switching)"
        ),
        "loraprompt_delta_cache_mb": info(
            1024, "Computed weight deltas kept for fast switching (MB)", gr.Number, {"precision": 0}
        ).needs_restart(),
    }


def register() -> None:
    """Add the options, when the script loads: A1111 runs on_ui_settings only while building its UI
    (ui.py:262), never with --nowebui, where the API then failed on any loraprompt_ option."""
    for key, option in shared.options_section(SECTION, options()).items():
        shared.opts.add_option(key, option)
