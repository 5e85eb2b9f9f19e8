"""`register()`: wires loraprompt into A1111's callbacks. Called once by the entry script."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from modules import script_callbacks

from loraprompt.infotext import addnet_tags, parse_lora_hashes, remap_lora_names

from . import coexist, settings, thumb_guard, webui
from .network import LoraPromptNetwork
from .runtime import Runtime

log = logging.getLogger("loraprompt")


@dataclass
class State:
    """Everything loraprompt holds in the A1111 process."""

    runtime: Runtime
    network: LoraPromptNetwork
    handles_tags: bool
    gallery: Any = None  # the GalleryTab, once the UI is built
    handed_back: str | None = None  # why the built-in has the tags now (an SD3 model is loaded)
    notice: str | None = None  # the hand-back line still to show under the next image
    conds_options: tuple[Any, ...] | None = None  # webui.CONDS_OPTIONS at the last generation

    def check_conds(self) -> None:
        """Before a generation: if an option that changes what tags do to the text encoder changed
        since the last one (in Settings, or in an API request's override_settings), A1111's cached
        conditioning is stale: forget it."""
        now = webui.conds_options()
        if self.conds_options is not None and now != self.conds_options:
            webui.forget_cached_conds()
        self.conds_options = now

    def claim(self) -> None:
        """Be the `lora`/`lyco` handler (see coexist.py for why this is repeated)."""
        displaced = coexist.claim(self.network)
        if displaced:
            log.info("loraprompt: took over <lora:...> from %s", ", ".join(displaced))

    def follow_model(self, sd_model: Any) -> None:
        """Claim the tags, or hand them to the built-in while a model it handles and loraprompt
        does not (SD3) is loaded; each change is said once (log, and under the next image)."""
        if not self.handles_tags:
            return
        reason = coexist.builtin_model(sd_model)
        if reason is not None and coexist.builtin_enabled():
            if self.handed_back != reason:
                self.runtime.restore()
                coexist.hand_back(self.network)
                self.handed_back, self.notice = reason, coexist.hand_back_notice(reason)
                log.warning("%s", self.notice)
            return
        if self.handed_back is not None:
            coexist.clear_builtin()
            self.handed_back, self.notice = None, None
            log.warning("loraprompt: an SD1/SD2/SDXL model is loaded; loraprompt handles <lora:...> tags again")
        self.claim()


STATE: State | None = None


def new_library() -> Any:
    """The LoRA library over A1111's LoRA folders."""
    from loraprompt import Library

    return Library(webui.lora_dirs(), cache_dir=webui.cache_dir())


def register() -> State:
    """Create the state and register every callback; returns the state (tests use it)."""
    global STATE
    runtime = Runtime(
        new_library,
        cache_mb=float(webui.opt("loraprompt_cache_mb", 1024)),
        delta_cache_mb=float(webui.opt("loraprompt_delta_cache_mb", 1024)),
        prefer_filename=lambda: webui.opt("lora_preferred_name", "Alias from file") == "Filename",
        backups=lambda: str(webui.opt("loraprompt_backups", "auto")),
        no_hashing=webui.no_hashing,
    )
    STATE = State(runtime, LoraPromptNetwork(runtime), bool(webui.opt("loraprompt_handle_lora_tags", True)))
    settings.register()  # now, not in on_ui_settings: that never runs with --nowebui (see settings.py)
    script_callbacks.on_before_ui(before_ui, name="loraprompt")
    script_callbacks.on_app_started(app_started, name="loraprompt")
    script_callbacks.on_model_loaded(model_loaded, name="loraprompt")
    script_callbacks.on_cfg_denoiser(cfg_denoiser, name="loraprompt")
    script_callbacks.on_infotext_pasted(infotext_pasted, name="loraprompt")
    script_callbacks.on_ui_tabs(ui_tabs, name="loraprompt")
    script_callbacks.on_script_unloaded(unloaded, name="loraprompt")
    return STATE


def _state() -> State:
    if STATE is None:
        raise RuntimeError("loraprompt_a1111.callbacks.register() was not called")
    return STATE


def before_ui() -> None:
    """Claim the tag types and, without the built-in, add the Lora cards page."""
    state = _state()
    if state.handles_tags:
        state.claim()
    if not coexist.builtin_enabled():
        from modules import ui_extra_networks

        from .page import LoraPromptPage

        ui_extra_networks.register_page(LoraPromptPage(state.runtime))


def app_started(demo: Any, app: Any) -> None:
    """Guard A1111's preview route against `..` (thumb_guard.py), claim again (every before_ui has
    run by now) and serve the LoRA API without the built-in."""
    thumb_guard.install(app)
    state = _state()
    if state.handles_tags:
        state.follow_model(webui.loaded_model())
        if coexist.builtin_enabled() and state.handed_back is None:
            log.warning("%s", coexist.NOTICE)
    if not coexist.builtin_enabled():
        from .api import add_routes

        add_routes(app, state.runtime)
    if state.gallery is not None:
        state.gallery.mount(app)


def model_loaded(sd_model: Any) -> None:
    """A1111 (re)loaded `sd_model` (or only its VAE: `Runtime.model_loaded`); an SD3 model's tags
    go to the built-in, an SD1/SD2/SDXL model's come back (see coexist.py)."""
    state = _state()
    state.runtime.model_loaded(sd_model)
    state.follow_model(sd_model)


def cfg_denoiser(params: Any) -> None:
    """Before each sampling step: the step's strengths for scheduled LoRAs (those run unfused,
    in their modules' forward: no weight is rewritten)."""
    _state().runtime.step(int(params.sampling_step), int(params.total_sampling_steps))


def infotext_pasted(infotext: str, params: dict[str, Any]) -> None:
    """Rename pasted `<lora:NAME:` tags to the local LoRA with the hash `Lora hashes` gives; with
    the built-in Lora disabled, add the tags of kohya's Additional Networks fields (`AddNet Model 1`,
    ...), as the built-in's callback does (networks.infotext_pasted), unless that extension, which
    pastes its own fields, is installed."""
    hashes = parse_lora_hashes(str(params.get("Lora hashes") or ""))
    if hashes and "Prompt" in params:
        params["Prompt"] = remap_lora_names(params["Prompt"], hashes, _state().runtime.lookup_hash)
    if "Prompt" in params and not coexist.builtin_enabled() and not _addnet_installed():
        tags = addnet_tags({str(k): str(v) for k, v in params.items()}, _state().runtime.lookup_hash)
        if tags:
            params["Prompt"] += "\n" + "".join(tags)


def _addnet_installed() -> bool:
    from modules import scripts

    runner = getattr(scripts, "scripts_txt2img", None)
    return "AddNet Module 1" in [field[1] for field in getattr(runner, "infotext_fields", None) or ()]


def ui_tabs() -> list[Any]:
    """The loraprompt gallery tab."""
    from .tab import build_tab

    return build_tab(_state())


def unloaded() -> None:
    """Script reload: restore the base weights and give the tag types back."""
    state = _state()
    state.runtime.restore()
    coexist.release(state.network)
