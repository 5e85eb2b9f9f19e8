"""A1111-style generation infotext (the PNG `parameters` chunk): build it, parse it back, and the
`Lora hashes` field. Pure standard library, so the A1111 glue and the web UI share one format.

The text is the prompt, an optional `Negative prompt:` line, then one line of `Key: value`
pairs joined by `, `; a value holding `,`, `:` or a newline is JSON-quoted, as A1111 does.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

# One `Key: value` pair of the parameters line: the key starts with a word character and may hold
# spaces, `-` and `/`; the value is a JSON string literal or runs to the next comma.
_PAIR = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE = re.compile(r"^(\d+)x(\d+)$")
# A1111 remaps names by `<lora:NAME:` when pasting (lora_script.infotext_pasted).
_LORA_NAME = re.compile(r"<lora:([^:]+):")
# kohya's sd-webui-additional-networks writes `AddNet Model N: name(0123456789ab)` (the LoRA hash A1111 uses)
_ADDNET_MODEL = re.compile(r"^(.*?)\s*\(([0-9a-fA-F]{6,64})\)\s*$")
_ADDNET_KEY = re.compile(r"^AddNet Model (\d+)$")
NEGATIVE_PREFIX = "Negative prompt:"


def quote(value: object) -> str:
    """Return `value` as text, JSON-quoted when it holds `,`, `:` or a newline."""
    text = str(value)
    if "," not in text and ":" not in text and "\n" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text: str) -> str:
    """Undo `quote`: a JSON string literal becomes its value; anything else is returned as is."""
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, str) else text


def lora_hash_name(name: str) -> str:
    """The key A1111 writes for a LoRA in `Lora hashes`: its name with `:` and `,` removed."""
    return name.replace(":", "").replace(",", "")


def format_lora_hashes(hashes: Mapping[str, str]) -> str:
    """`{"detail": "0123456789ab"}` -> `detail: 0123456789ab` (unquoted; `format_infotext` quotes)."""
    return ", ".join(f"{lora_hash_name(name)}: {short}" for name, short in hashes.items())


def parse_lora_hashes(value: str) -> dict[str, str]:
    """Parse a `Lora hashes` value (quoted or not) into name -> short hash, as A1111 pastes it."""
    out: dict[str, str] = {}
    for part in unquote(value.strip()).split(","):
        name, sep, short = part.partition(":")
        if sep and name.strip():
            out[name.strip()] = short.strip()
    return out


@dataclass
class GenerationInfo:
    """The settings of one generated image, in A1111's infotext vocabulary."""

    prompt: str
    negative_prompt: str = ""
    steps: int = 20
    sampler: str = "Euler a"
    schedule_type: str | None = None
    cfg_scale: float = 7.0
    distilled_cfg_scale: float | None = None  # Flux.1-dev's guidance, as Forge writes it
    shift: float | None = None  # a flow-matching model's timestep shift (SD3), as Forge writes it
    seed: int = 0
    width: int = 512
    height: int = 512
    model: str | None = None
    model_hash: str | None = None
    lora_hashes: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def parameters(self) -> dict[str, Any]:
        """The `Key: value` pairs in A1111's order (None values are left out by the formatter)."""
        params: dict[str, Any] = {
            "Steps": self.steps,
            "Sampler": self.sampler,
            "Schedule type": self.schedule_type,
            "CFG scale": number(self.cfg_scale),
            "Distilled CFG Scale": None if self.distilled_cfg_scale is None else number(self.distilled_cfg_scale),
            "Shift": None if self.shift is None else number(self.shift),
            "Seed": self.seed,
            "Size": f"{self.width}x{self.height}",
            "Model hash": self.model_hash,
            "Model": self.model,
        }
        if self.lora_hashes:
            params["Lora hashes"] = format_lora_hashes(self.lora_hashes)
        params.update(self.extra)
        return params


def number(value: float) -> str:
    """A1111 prints CFG 7 as `7` and 7.5 as `7.5`."""
    return str(int(value)) if float(value).is_integer() else str(value)



def format_infotext(info: GenerationInfo) -> str:
    """Build the `parameters` text A1111 writes into its PNGs."""
    pairs = ", ".join(
        key if key == value else f"{key}: {quote(value)}"
        for key, value in info.parameters().items()
        if value is not None
    )
    negative = f"\n{NEGATIVE_PREFIX} {info.negative_prompt}" if info.negative_prompt else ""
    return f"{info.prompt}{negative}\n{pairs}".strip()


def parse_infotext(text: str) -> dict[str, str]:
    """Infotext -> A1111's field dict (`Prompt`, `Negative prompt`, unquoted keys, `Size-1`/`Size-2`)."""
    # Unlike A1111 this invents no defaults for missing fields; the caller decides.
    *lines, last = text.strip().split("\n")
    if len(_PAIR.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt = negative = ""
    in_negative = False
    for line in lines:
        line = line.strip()
        if line.startswith(NEGATIVE_PREFIX):
            in_negative = True
            line = line[len(NEGATIVE_PREFIX) :].strip()
        if in_negative:
            negative += ("\n" if negative else "") + line
        else:
            prompt += ("\n" if prompt else "") + line
    out: dict[str, str] = {"Prompt": prompt, "Negative prompt": negative}
    for key, value in _PAIR.findall(last):
        value = unquote(value)
        size = _SIZE.match(value)
        if size:
            out[f"{key}-1"], out[f"{key}-2"] = size.group(1), size.group(2)
        else:
            out[key] = value
    return out


@dataclass(frozen=True)
class InfotextLora:
    """A `<lora:...>` tag found in a pasted prompt, with the hash `Lora hashes` gave its name."""

    name: str
    te: Any  # a float, or the parser's Schedule for keyframed strengths
    unet: Any
    short_hash: str | None


def infotext_loras(fields: Mapping[str, str]) -> list[InfotextLora]:
    """The LoRA tags of a parsed infotext's prompt (A1111 profile), each with its `Lora hashes` entry."""
    from loraprompt.syntax import parse

    hashes = parse_lora_hashes(fields.get("Lora hashes", ""))
    parsed = parse(fields.get("Prompt", ""), profile="a1111")
    return [
        InfotextLora(a.name, a.te, a.unet, hashes.get(lora_hash_name(a.name))) for a in parsed.loras
    ]


def remap_lora_names(prompt: str, lora_hashes: Mapping[str, str], lookup: Callable[[str], str | None]) -> str:
    """Rename `<lora:NAME:` to the local name `lookup(hash of NAME)` gives, as A1111's paste does."""

    def rename(match: re.Match[str]) -> str:
        name = match.group(1)
        short = lora_hashes.get(name)
        local = lookup(short) if short else None
        return f"<lora:{local}:" if local else match.group(0)

    return _LORA_NAME.sub(rename, prompt)


def addnet_tags(fields: Mapping[str, str], lookup: Callable[[str], str | None] | None = None) -> list[str]:
    """The `<lora:...>` tags of the fields kohya's sd-webui-additional-networks wrote (`AddNet
    Module N: LoRA`, `AddNet Model N: name(hash)`, `AddNet Weight A N` for the UNet and `B N` for
    the text encoder), as A1111's built-in Lora adds them to a pasted prompt (networks.infotext_pasted),
    and beyond it: the text-encoder weight is kept where it differs, and the name is the local file's
    that has that hash (`lookup`). An entry whose weight is not a finite number gives no tag."""
    from loraprompt.syntax import LoraActivation, format_activation

    def weight(key: str, default: str | None) -> float | None:
        text = fields.get(key, default)
        try:
            value = float(text) if text is not None else None
        except ValueError:
            return None
        return value if value is not None and math.isfinite(value) else None

    tags: list[str] = []
    for key in fields:
        number = _ADDNET_KEY.match(key)
        if number is None or fields.get(f"AddNet Module {number[1]}", "").strip() != "LoRA":
            continue
        model = fields[key].strip()
        found = _ADDNET_MODEL.match(model)
        name, short = (found[1], found[2].lower()) if found else (model, None)
        name = (lookup(short) if lookup and short else None) or name
        unet = weight(f"AddNet Weight A {number[1]}", "1.0")
        te = weight(f"AddNet Weight B {number[1]}", None)
        if name and unet is not None:
            tags.append(format_activation(LoraActivation(name, te=unet if te is None else te, unet=unet)))
    return tags


def pasted_prompt(fields: Mapping[str, str], lookup: Callable[[str], str | None]) -> str:
    """The prompt A1111 (built-in Lora enabled) makes of a pasted infotext's parsed `fields`: each
    `<lora:NAME:` renamed to the local file `lookup` gives for its `Lora hashes` entry
    (lora_script.infotext_pasted) and the Additional Networks LoRAs added as tags (`addnet_tags`)."""
    prompt = remap_lora_names(fields.get("Prompt", ""), parse_lora_hashes(fields.get("Lora hashes", "")), lookup)
    tags = addnet_tags(fields, lookup)
    return prompt + "\n" + "".join(tags) if tags else prompt


# Where an image keeps its infotext outside a PNG: the EXIF UserComment of a JPEG or WebP
_EXIF_IFD, _USER_COMMENT = 0x8769, 0x9286
_COMMENT_CODES = {b"ASCII\0\0\0": "ascii", b"JIS\0\0\0\0\0": "shift_jis", b"UNICODE\0": "utf_16_be"}


def image_infotext(image: Any) -> tuple[str, dict[str, str]]:
    """A1111's read_info_from_image (v1.10.1): the infotext (the `parameters` text chunk of a PNG;
    the EXIF UserComment of a JPEG or WebP, which wins; a GIF's comment) and the image's other text
    items."""
    items = {k: v for k, v in image.info.items() if isinstance(k, str) and isinstance(v, str)}
    info = items.pop("parameters", "")
    if "exif" in image.info:
        try:
            comment = image.getexif().get_ifd(_EXIF_IFD).get(_USER_COMMENT, b"")
        except Exception:  # a malformed EXIF block has no comment to read
            comment = b""
        text = user_comment(comment) if isinstance(comment, bytes) else str(comment)
        if text:
            info = text
    elif isinstance(image.info.get("comment"), bytes):  # a GIF's
        info = image.info["comment"].decode("utf8", errors="ignore")
    return info, items


def user_comment(data: bytes) -> str:
    """An EXIF UserComment as text: its 8-byte character code says the encoding (ASCII, JIS,
    UNICODE: big-endian UTF-16, as A1111 writes it), as piexif.helper.UserComment.load reads it;
    what that refuses (shorter than the code, an undefined or unknown code) A1111 decodes whole as
    UTF-8, ignoring errors."""
    encoding = _COMMENT_CODES.get(data[:8]) if len(data) >= 8 else None
    if encoding is None:
        return data.decode("utf8", errors="ignore")
    return data[8:].decode(encoding, errors="replace")
