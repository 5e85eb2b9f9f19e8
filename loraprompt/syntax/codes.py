"""Every diagnostic code the parser emits, with its usual severity and meaning (spec §4.8, kebab-case)."""

from __future__ import annotations

# code -> (severity, meaning). The spec's E-/W-/I- prefix is the severity; the code drops it.
DIAGNOSTIC_CODES: dict[str, tuple[str, str]] = {
    "name-missing": ("error", "no positional item, so no name"),
    "name-empty": ("error", "empty or whitespace-only name"),
    "weight-syntax": ("error", "a weight that is neither a number nor a keyframe list (hint for '0,8')"),
    "weight-nonfinite": ("error", "inf or nan weight (loraprompt profile)"),
    "dyn-syntax": ("error", "dyn is not an integer"),
    "lbw-preset": ("error", "unknown block-weight preset"),
    "lbw-length": ("error", "block vector of a length other than 12, 17, 20, 26 or 61"),
    "lbw-value": ("error", "a block vector entry that is not a number, R, U, X or X±d"),
    "lbw-x-missing": ("error", "a block vector uses X but no x= is given"),
    "step-syntax": ("error", "start=/stop=/step= value that is not a number or range"),
    "hash-syntax": ("error", "hash= is not 10, 12 or 64 hex digits"),
    "a1111-drop-all": ("error/info", "A1111 drops every LoRA here: an error in profile a1111, info otherwise"),
    "type-unknown": ("warning", "a tag of an unregistered type (still removed from the text)"),
    "type-case": ("warning", "LoRA, LORA and similar: types are case-sensitive"),
    "key-unknown": ("warning", "an unknown named key (kept in extras)"),
    "key-spaced": ("warning", "a key that only matches after trimming (not applied)"),
    "extra-positional": ("warning", "positional items beyond the 4th are ignored"),
    "weight-empty": ("warning", "an empty value is treated as missing (A1111 fails on it)"),
    "number-noncanonical": ("warning", "a number accepted but not written canonically (1_0, +.5, 1e-1...)"),
    "name-has-equals": ("warning", "the first item read as key=value, so a later item became the name"),
    "lbw-groups-conflict": ("warning", "both lbw and in/mid/out are given; lbw wins"),
    "duplicate": ("warning", "the same LoRA name more than once; reports the effective weights"),
    "batch-divergent": ("warning", "a later prompt of a batch has other LoRAs than the first"),
    "tag-in-negative": ("warning", "a tag in a negative prompt (encoded as text, never applied)"),
    "tag-in-edit": ("warning", "a LoRA tag inside prompt editing or alternation (applies to every step)"),
    "tag-in-emphasis": ("warning", "a LoRA tag inside emphasis (the emphasis does not change it)"),
    "tag-in-and": ("warning", "a LoRA tag in an AND part other than the first (applies to all parts)"),
    "unclosed-tag": ("warning", "a '<type:' with no '>' before the end of its line or of the text"),
    "tag-swallowed": ("warning", "a tag's args contain '<type:': an unclosed tag swallowed the next one"),
    "andweight-from-tag": ("warning", "a ':number' after a tag becomes the AND weight of the prompt part"),
    "comment-in-tag": ("warning", "a '#' comment starts inside an unclosed tag and cuts it"),
    "lbw-positional": ("info", "block weights in the unet slot (plain A1111 drops all LoRAs); write lbw="),
}
