"""The always-on script A1111 runs for every generation (no UI of its own).

- `process`: forgets A1111's cached conditioning when a loraprompt option that changes what tags
  do to the text encoder changed since the last generation (webui.CONDS_OPTIONS); reclaims
  `lora`/`lyco` before the first batch (another extension may have registered its own handler
  since start-up), or leaves them to the built-in for an SD3 model
  (A1111 switches to a model it keeps in memory without `on_model_loaded`), showing the
  hand-back line once under the image; with `p.disable_extra_networks`, restores the base
  weights, since A1111 then skips every extra network's activate.
- Step schedules (`unet=0@0,1@1`, `start=`, `stop=`) are re-applied by the `on_cfg_denoiser`
  callback (see callbacks.py): it runs before every sampling step, first pass and hires alike.
"""

from __future__ import annotations

from typing import Any

from modules import scripts

from . import callbacks, webui


class LoraPromptScript(scripts.Script):
    """loraprompt's per-generation hooks."""

    def title(self) -> str:
        return "loraprompt"

    def show(self, is_img2img: bool) -> Any:
        return scripts.AlwaysVisible

    def process(self, p: Any, *args: Any) -> None:
        """Make sure loraprompt is the one LoRA handler before the batches start."""
        state = callbacks.STATE
        if state is None:
            return
        state.check_conds()
        if getattr(p, "disable_extra_networks", False):
            state.runtime.restore()
        elif state.handles_tags:
            state.follow_model(getattr(p, "sd_model", None) or webui.loaded_model())
            if state.notice:
                p.comment(state.notice)
                state.notice = None
