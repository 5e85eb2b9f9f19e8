"""Stand-in for modules/infotext_utils.py (signature from A1111 v1.10.1; see modules/__init__.py).

Like A1111's, parse_generation_parameters only parses: the infotext_pasted callbacks are run by its
callers, the paste buttons (connect_paste's paste_func, :486-487) and /sdapi/v1/png-info
(modules/api/api.py:597-598), which `paste` stands in for."""

from loraprompt.infotext import parse_infotext
from modules import script_callbacks


def parse_generation_parameters(x: str, skip_fields: list[str] | None = None):
    res = parse_infotext(x)
    for key in skip_fields or []:
        res.pop(key, None)
    return res


def paste(prompt: str):
    """Not A1111 API: what a paste button (or the png-info route) does with an infotext."""
    params = parse_generation_parameters(prompt)
    script_callbacks.infotext_pasted_callback(prompt, params)
    return params
