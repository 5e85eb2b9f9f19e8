"""Stand-in for modules/infotext_utils.py (signature from A1111 v1.10.1; see modules/__init__.py)."""

from loraprompt.infotext import parse_infotext
from modules import script_callbacks


def parse_generation_parameters(x: str, skip_fields: list[str] | None = None):
    res = parse_infotext(x)
    for key in skip_fields or []:
        res.pop(key, None)
    script_callbacks.infotext_pasted_callback(x, res)
    return res
