"""The path policy for web routes (spec/robustness.md items 18, 19, 22).

Policy, in order:
1. A request names a file by a relative reference: `/`-separated, no empty, `.` or `..` part, no
   backslash, NUL or control character, no drive letter, not absolute. `%` is an ordinary character
   here: references come from `Library.file_ref` of scanned files (routes take card ids, never
   paths), and `wget` keeps `%20` in the names it saves; an undecoded `%2e%2e` names a folder
   literally called that, which is then looked up like any other name.
2. The reference is joined to each root in turn and resolved with symlinks followed. The result
   must be a regular file inside a resolved root (compared by path components, so `LoraEvil/` is
   not inside `Lora/`), or a preview the scan listed in a symlinked folder that the walk followed
   out of the root, at the real path the scan saw (a file swapped for a symlink later is refused).
3. For kind "preview" the resolved file must have an image extension and start with an image
   signature (PNG, JPEG, GIF, WebP), not necessarily its extension's: Civitai Helper saves
   Civitai's JPEG as `<stem>.preview.png`, which A1111 shows. It is served with the content type
   its bytes say (`content_type`), with `nosniff`. `.safetensors`, `.json`, `.html`, `.svg`, other
   extensions and files whose bytes are no image are refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".gif": "image/gif",
}
_BAD_REF = re.compile(r"[\x00-\x1f\x7f\\]|^[a-zA-Z]:")


def image_kind(data: bytes) -> str | None:
    """The content type whose signature starts `data`, or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def check_ref(ref: object) -> str | None:
    """The reference as a clean relative `/` path, or None when rule 1 refuses it."""
    if isinstance(ref, Path):
        ref = ref.as_posix()
    if not isinstance(ref, str) or not ref or ref.startswith("/") or _BAD_REF.search(ref):
        return None
    parts = ref.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return None
    return ref


def _inside(path: Path, roots: Iterable[Path]) -> bool:
    return any(path == r or path.is_relative_to(r) for r in roots)


def content_type(path: Path) -> str | None:
    """The image content type to serve `path` with: the one its first bytes say (`image_kind`), for
    a file with an image extension; None for another extension or bytes that are no image."""
    if path.suffix.lower() not in IMAGE_TYPES:
        return None
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return None
    return image_kind(head)


def safe_file(
    ref: object, roots: Sequence[Path], kind: str = "preview", allowed: frozenset[Path] = frozenset()
) -> Path | None:
    """The resolved file a web route may serve for `ref`, or None (see the module policy)."""
    found = safe_image(ref, roots, kind, allowed)
    return found[0] if found is not None else None


def safe_image(
    ref: object, roots: Sequence[Path], kind: str = "preview", allowed: frozenset[Path] = frozenset()
) -> tuple[Path, str] | None:
    """`safe_file`'s file with the content type its bytes say (read once), or None."""
    if kind != "preview":
        raise ValueError(f"unknown file kind {kind!r}; only 'preview' files are served")
    clean = check_ref(ref)
    if clean is None:
        return None
    resolved_roots = []
    for root in roots:
        try:
            resolved_roots.append(root.resolve(strict=True))
        except OSError:
            continue
    for root in resolved_roots:
        try:
            target = (root / clean).resolve(strict=True)
        except (OSError, RuntimeError):
            continue
        if not (_inside(target, resolved_roots) or target in allowed) or not target.is_file():
            continue
        found = content_type(target)
        if found is not None:
            return target, found
    return None
