"""Stand-in for modules/script_callbacks.py (signatures from A1111 v1.10.1; see modules/__init__.py)."""

from collections import defaultdict

callback_map = defaultdict(list)
errors_reported = []  # stand-in for report_exception (:14): (category, exception) A1111 would print


class CFGDenoiserParams:
    def __init__(self, x, image_cond, sigma, sampling_step, total_sampling_steps, text_cond, text_uncond, denoiser=None):  # noqa: PLR0917  (A1111's signature)
        self.x = x
        self.image_cond = image_cond
        self.sigma = sigma
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps
        self.text_cond = text_cond
        self.text_uncond = text_uncond
        self.denoiser = denoiser


def clear_callbacks():
    callback_map.clear()


def _run(category, *args, reverse=False):
    # like A1111's *_callback functions, an exception is reported and the next callback still runs
    found = list(callback_map[category])
    results = []
    for callback in reversed(found) if reverse else found:
        try:
            results.append(callback(*args))
        except Exception as e:
            errors_reported.append((category, e))
    return results


def app_started_callback(demo, app):
    _run("app_started", demo, app)


def model_loaded_callback(sd_model):
    _run("model_loaded", sd_model)


def ui_tabs_callback():
    return [tab for tabs in _run("ui_tabs") for tab in (tabs or [])]


def ui_settings_callback():
    _run("ui_settings")


def cfg_denoiser_callback(params):
    _run("cfg_denoiser", params)


def infotext_pasted_callback(infotext, params):
    _run("infotext_pasted", infotext, params)


def script_unloaded_callback():
    _run("script_unloaded", reverse=True)


def before_ui_callback():
    _run("before_ui", reverse=True)


def on_app_started(callback, *, name=None):
    callback_map["app_started"].append(callback)


def on_model_loaded(callback, *, name=None):
    callback_map["model_loaded"].append(callback)


def on_ui_tabs(callback, *, name=None):
    callback_map["ui_tabs"].append(callback)


def on_ui_settings(callback, *, name=None):
    callback_map["ui_settings"].append(callback)


def on_cfg_denoiser(callback, *, name=None):
    callback_map["cfg_denoiser"].append(callback)


def on_infotext_pasted(callback, *, name=None):
    callback_map["infotext_pasted"].append(callback)


def on_script_unloaded(callback, *, name=None):
    callback_map["script_unloaded"].append(callback)


def on_before_ui(callback, *, name=None):
    callback_map["before_ui"].append(callback)
