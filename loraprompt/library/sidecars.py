"""Files beside a model: previews, descriptions, A1111's `<stem>.json` (read and written, unknown
keys kept) and the read-only imports of other tools (`.civitai.info`, Civitai Browser+'s
`.api_info.json`, Lora-Manager's `.metadata.json`). Conventions: spec/gallery.md and spec/a1111.md section 3.8.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from loraprompt.errors import LoraPromptError
from loraprompt.files import temp_beside
from loraprompt.library.metadata import cap

PREVIEW_EXTS = ("png", "jpg", "jpeg", "webp", "gif")
MAX_SIDECAR_BYTES = 8 * 1024 * 1024
MAX_DESCRIPTION = 16 * 1024
USER_TEXT_KEYS = ("description", "activation text", "negative text", "notes")
SD_VERSIONS = ("SD1", "SD2", "SDXL", "Unknown")
FLAG_KEYS = ("favorite", "nsfw")


def preview_names(stem: str) -> list[str]:
    """Preview file names in A1111's order: each extension as `<stem>.<ext>`, then `<stem>.preview.<ext>`."""
    out: list[str] = []
    for ext in PREVIEW_EXTS:
        out += [f"{stem}.{ext}", f"{stem}.preview.{ext}"]
    return out


def sidecar_names(stem: str) -> dict[str, str]:
    """kind -> file name of every text sidecar looked for beside `<stem>.*`."""
    return {
        "user": f"{stem}.json",
        "civitai": f"{stem}.civitai.info",
        "api_info": f"{stem}.api_info.json",
        "lora_manager": f"{stem}.metadata.json",
        "description": f"{stem}.txt",
        "description2": f"{stem}.description.txt",
    }


def make_listing(names: Iterable[str]) -> dict[str, str]:
    """A folder listing for `find_names`: each name under itself and under its lower-cased form."""
    names = list(names)
    listing = {n.lower(): n for n in sorted(names, reverse=True)}
    listing.update({n: n for n in names})
    return listing


def find_names(wanted: Iterable[str], listing: Mapping[str, str]) -> list[str]:
    """Actual names from a `make_listing` listing, exact spelling first, then any case; in the
    order of `wanted`."""
    found: list[str] = []
    for name in wanted:
        actual = listing.get(name) or listing.get(name.lower())
        if actual is not None and actual not in found:
            found.append(actual)
    return found


def read_text(path: Path, limit: int = MAX_SIDECAR_BYTES, *, io_errors: bool = False) -> str | None:
    """A sidecar's text (UTF-8, BOM tolerated), or None when missing, unreadable or too big.
    `io_errors`: raise the OSError of a file that cannot be read instead (a scan must not
    remember a read error that may go away, EIO on a share, as the file having no content)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(limit + 1)
    except OSError:
        if io_errors:
            raise
        return None
    if len(raw) > limit:
        return None
    return raw.decode("utf-8-sig", errors="replace")


def _finite(text: str) -> float | None:
    value = float(text)
    return value if math.isfinite(value) else None


def read_json(path: Path, *, io_errors: bool = False) -> dict[str, Any] | None:
    """A sidecar JSON object, or None when missing, invalid or not an object; NaN and Infinity
    (which Python's json accepts, JSON does not) and numbers too big for a float (`1e999`) read as
    null, so the page's JSON can carry them. `io_errors`: as `read_text`'s."""
    text = read_text(path, io_errors=io_errors)
    return _json_object(text) if text is not None else None


def _json_object(text: str) -> dict[str, Any] | None:
    """`read_json`'s object of a text, or None when it is no JSON object."""
    try:
        doc = json.loads(text, parse_constant=lambda _: None, parse_float=_finite)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than json can parse
        return None
    return doc if isinstance(doc, dict) else None


def _text(value: Any) -> str:
    """A sidecar's text value: a string, or a number as text; "" for null, a missing key or any
    other type (never the text "None" or "False", which would hide the header's base model)."""
    if isinstance(value, str):
        return value
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else ""


def _words(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return []
    return [cap(str(w).strip(), 200) for w in value if isinstance(w, (str, int, float)) and str(w).strip()][:50]


NSFW_LEVEL = 4  # Civitai's nsfwLevel: 1 PG, 2 PG-13, 4 R, 8 X, 16 XXX (bit flags); R and up is NSFW


def _nsfw(item: Mapping[str, Any]) -> bool:
    """Whether a Civitai model or image is NSFW: `nsfw` true or a level name other than "None"
    (the API's strings are None/Soft/Mature/X; Civitai Helper's test is the same), or an
    `nsfwLevel` of R or above (Lora-Manager's default blur threshold)."""
    flag, level = item.get("nsfw"), item.get("nsfwLevel")
    if flag is True or (isinstance(flag, str) and flag not in ("None", "")):
        return True
    return isinstance(level, int) and not isinstance(level, bool) and level >= NSFW_LEVEL


def civitai_summary(doc: Mapping[str, Any]) -> dict[str, Any]:
    """What a `<stem>.civitai.info` (Civitai model-version JSON) tells; `{}` for "not found"."""
    if not doc:
        return {}
    model: dict[str, Any] = doc["model"] if isinstance(doc.get("model"), dict) else {}
    images: list[Any] = doc["images"] if isinstance(doc.get("images"), list) else []
    return {
        "id": doc.get("id"),
        "model_id": doc.get("modelId"),
        "name": cap(_text(doc.get("name"))),
        "model_name": cap(_text(model.get("name"))),
        "base_model": cap(_text(doc.get("baseModel"))),
        "trained_words": _words(doc.get("trainedWords")),
        "nsfw": _nsfw(model) or any(isinstance(i, dict) and _nsfw(i) for i in images[:1]),
        "description": cap(_text(doc.get("description"))),
    }


def civitai_model_summary(doc: Mapping[str, Any], stem: str) -> dict[str, Any]:
    """What Civitai Browser+'s `<stem>.api_info.json` tells: Civitai's model JSON, whose version
    is the one listing a file of this stem (Browser+ may add `_<file id>` to a name it already
    has) or the only one; older releases saved that version's JSON itself, read as `.civitai.info`."""
    versions = doc.get("modelVersions")
    if not isinstance(versions, list):
        return civitai_summary(doc)
    mine = [v for v in versions if isinstance(v, dict) and _has_file(v, stem)]
    version = mine[0] if mine else versions[0] if len(versions) == 1 and isinstance(versions[0], dict) else None
    summary = civitai_summary(version) if version else {}
    summary.update({
        "model_id": doc.get("id"), "model_name": cap(_text(doc.get("name"))),
        "tags": _words([t.get("name") if isinstance(t, dict) else t for t in doc["tags"]]
                       if isinstance(doc.get("tags"), list) else None),
        "nsfw": _nsfw(doc) or bool(summary.get("nsfw")),
        "description": cap(_text(doc.get("description"))) or summary.get("description", ""),
    })
    return summary


def _has_file(version: Mapping[str, Any], stem: str) -> bool:
    files = version.get("files")
    for f in files if isinstance(files, list) else ():
        name = f.get("name") if isinstance(f, dict) else None
        if isinstance(name, str) and "." in name:
            base = name[: name.rfind(".")]
            if stem in (base, f"{base}_{f.get('id')}"):
                return True
    return False


def lora_manager_summary(doc: Mapping[str, Any]) -> dict[str, Any]:
    """What Lora-Manager's `<stem>.metadata.json` tells."""
    civitai: dict[str, Any] = doc["civitai"] if isinstance(doc.get("civitai"), dict) else {}
    usage: Any = doc.get("usage_tips")
    if isinstance(usage, str):
        try:
            usage = json.loads(usage)
        except (ValueError, RecursionError):
            usage = {}
    usage = usage if isinstance(usage, dict) else {}
    strength = usage.get("strength")
    return {
        "sha256": _text(doc.get("sha256")).lower()[:64],
        "base_model": cap(_text(doc.get("base_model"))),
        "tags": _words(doc.get("tags")),
        "favorite": bool(doc.get("favorite")),
        "notes": cap(_text(doc.get("notes"))),
        "trained_words": _words(civitai.get("trainedWords")),
        "strength": float(strength) if isinstance(strength, (int, float)) and math.isfinite(strength) else None,
    }


_SURROGATE = re.compile("[\ud800-\udfff]")


def escape_surrogates(json_text: str) -> str:
    """JSON text with its lone surrogates (a POSIX file name that is not UTF-8 decodes to them) as
    `\\udcXX` escapes, which JSON reads back the same: the text then encodes as UTF-8."""
    if json_text.isascii() or not _SURROGATE.search(json_text):
        return json_text
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", json_text)  # outside strings JSON is ASCII


def atomic_write_text(path: Path, text: str, *, json_text: bool = False) -> None:
    """Write `text` to `path` through a temporary file in the same folder and an atomic rename.
    `json_text`: `text` is JSON, whose strings may hold lone surrogates (a POSIX file name that is
    not UTF-8 decodes to them): those are written as `\\udcXX` escapes, which JSON reads back the same."""
    if json_text:
        text = escape_surrogates(text)
    fd, tmp = temp_beside(path)  # the file keeps its permissions (not mkstemp's 0600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _check_value(key: str, value: Any) -> Any:
    if key == "preferred weight":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise LoraPromptError(f"'preferred weight' must be a finite number, got {value!r}")
        return float(value)
    if key in USER_TEXT_KEYS or key == "sd version":
        if not isinstance(value, str):
            raise LoraPromptError(f"{key!r} must be text, got {type(value).__name__}")
        return value
    if key in FLAG_KEYS:
        if not isinstance(value, bool):
            raise LoraPromptError(f"{key!r} must be true or false, got {value!r}")
        return value
    try:
        json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise LoraPromptError(f"{key!r}: value is not JSON-serialisable ({exc})") from exc
    return value


def user_json_path(model_path: Path) -> Path:
    """The `<stem>.json` beside `model_path` as it is spelled on disk, found as a scan finds it
    (exact spelling first, then any letter case: `Foo.JSON` for `foo.safetensors`); `<stem>.json`
    when there is none (or the folder cannot be listed)."""
    wanted = sidecar_names(model_path.stem)["user"]
    try:
        names = [n for n in os.listdir(model_path.parent) if n.lower() == wanted.lower()]
    except OSError:
        names = []
    found = find_names([wanted], make_listing(names))
    return model_path.with_name(found[0] if found else wanted)


def _existing_user_json(target: Path) -> dict[str, Any]:
    """The object of the user .json about to be rewritten, read strictly (reading for display is
    lenient, `read_json`): a file that cannot be read, is too big, is not UTF-8 (its text would
    be written back with U+FFFD for the bad bytes) or is not a JSON object is refused, naming it,
    and left untouched."""
    try:
        with open(target, "rb") as f:
            raw = f.read(MAX_SIDECAR_BYTES + 1)
    except OSError as exc:
        raise LoraPromptError(f"{target}: cannot read the existing metadata ({exc.strerror or exc}); not overwriting it") from exc
    if len(raw) > MAX_SIDECAR_BYTES:
        raise LoraPromptError(f"{target}: existing user metadata is over {MAX_SIDECAR_BYTES} bytes; not overwriting it")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LoraPromptError(f"{target}: existing user metadata is not valid UTF-8 (byte {exc.start}); not overwriting it, "
                              "which would replace the bad bytes") from exc
    loaded = _json_object(text)
    if loaded is None:
        raise LoraPromptError(f"{target}: existing user metadata is not a JSON object; not overwriting it")
    return loaded


def write_user_metadata(model_path: Path, updates: Mapping[str, Any]) -> dict[str, Any]:
    """Update A1111's `<stem>.json` beside `model_path` with `updates` (None removes a key), keeping
    every other key; written atomically with A1111's formatting, to the file that is read (its
    name kept, whatever its letter case: `user_json_path`). Returns the saved object.

    Raises LoraPromptError for bad values, when the existing file is not a UTF-8 JSON object (it
    is never overwritten then: it may hold another tool's data; `_existing_user_json`) or when it
    cannot be written (naming the file and the system's reason)."""
    target = user_json_path(model_path)
    current = _existing_user_json(target) if target.exists() else {}
    for key, value in updates.items():
        if value is None:
            current.pop(key, None)
        else:
            current[key] = _check_value(key, value)
    try:
        atomic_write_text(target, json.dumps(current, indent=4, ensure_ascii=False))
    except OSError as exc:  # a read-only share, no permission, a full disk, the folder gone
        raise LoraPromptError(f"{target}: cannot write the metadata ({exc.strerror or exc})") from exc
    return current
