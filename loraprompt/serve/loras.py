"""Where the LoRAs of a request come from: a name in the library, a path or `file://` URL under
the LoRA folders or one the library lists there (a symlink in a LoRA folder included; anything
else is refused, 403, as is any reference with a control character), an `owner/name` shorthand
(the local LoRA of that name: no hub is reachable), or an `http(s)://` URL, downloaded once into
a content-hash cache with a size cap (413) and a timeout; a malformed URL is a 422.

A file given by path or URL is pinned: the prompt names it by a name that resolves to exactly
that file, even when another file in the folders has the same stem."""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from loraprompt.library import Library
from loraprompt.library.entry import MODEL_EXTS
from loraprompt.library.resolve import Resolution
from loraprompt.serve.errors import Field, ServeError

DEFAULT_MAX_DOWNLOAD_MB = 1024
DEFAULT_TIMEOUT_S = 60.0
_CHUNK = 1 << 20
_OWNER_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(?:/[0-9a-f]{8,})?$")
_SAFE_NAME = re.compile(r"[^\w.-]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class DownloadFailed(Exception):
    """A URL could not be fetched (unreachable, timed out, HTTP error): the prediction fails."""


class PinnedLibrary:
    """The engine's `Library`, plus names pinned to exact files (downloaded files live in a
    folder of their own). Everything else is the wrapped library's."""

    def __init__(self, library: Any, download_dir: str | os.PathLike[str]) -> None:
        self.base = library
        self.download_dir = Path(download_dir)
        self.download_dir.mkdir(parents=True, exist_ok=True)
        self.downloads = Library([str(self.download_dir)], persist=False, settle_s=0.0)
        self._pins: dict[str, str] = {}
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.base, name)

    def pin(self, path: str | os.PathLike[str]) -> str:
        """A name that resolves to exactly `path`: its own display name when that already does."""
        path = os.path.abspath(path)
        entry = self.entry(path)
        if entry is not None and self.base.get(path) is not None:
            name = self.base.display_name(entry)
            found = self.base.resolve(name)
            if found.entry is not None and found.entry.path == path and not found.diagnostics:
                return str(name)
        stem = _SAFE_NAME.sub("_", Path(path).stem)[:40] or "lora"
        name = f"{stem}~{hashlib.sha256(path.encode()).hexdigest()[:8]}"
        with self._lock:
            self._pins[name] = path
        return name

    def add_pins(self, pins: Iterable[tuple[str, str]]) -> None:
        """Pins made elsewhere (a Ray ingress) for files this process sees at the same paths."""
        with self._lock:
            self._pins.update(pins)

    def pins_in(self, prompt: str) -> tuple[tuple[str, str], ...]:
        """The (name, file) pins a prompt uses."""
        return tuple((n, p) for n, p in self._pins.items() if f"<lora:{n}:" in prompt or f"<lora:{n}>" in prompt)

    def entry(self, path: str) -> Any:
        """The library entry of a file under the LoRA folders or the download cache (rescans once)."""
        for lib in (self.base, self.downloads):
            found = lib.get(path)
            if found is None and any(Path(path).is_relative_to(r) for r in lib.roots):
                lib.refresh()
                found = lib.get(path)
            if found is not None:
                return found
        return None

    def resolve(self, name: str, *, hash: str | None = None, profile: str = "loraprompt") -> Resolution:
        path = self._pins.get(name) if isinstance(name, str) else None  # else the library says what is wrong
        if path is None:
            return self.base.resolve(name, hash=hash, profile=profile)  # type: ignore[no-any-return]
        entry = self.entry(path)
        if entry is None:
            return self.base.resolve(name, hash=hash, profile=profile)  # type: ignore[no-any-return]  # file gone: not found
        return Resolution(entry, (), "pinned")

    def get(self, path: str | os.PathLike[str]) -> Any:
        return self.base.get(path) or self.downloads.get(path)

    def note_use(self, entries: Iterable[Any]) -> None:
        self.base.note_use(e for e in entries if self.base.get(e if isinstance(e, str) else e.path) is not None)


def trigger_of(library: PinnedLibrary, path: str) -> str:
    """What `<N>` stands for: the LoRA's activation text, else its first trained word (Civitai,
    header trigger phrase or most frequent training tag), else its name."""
    entry = library.entry(path)
    if entry is None:
        return Path(path).stem
    if entry.activation_text.strip():
        return str(entry.activation_text.strip())
    words = entry.trigger_words()
    if words:
        return str(words[0][0])
    return str(library.base.display_name(entry)) if library.base.get(path) is not None else str(entry.name)


class LoraSources:
    """Turns what a request says about a LoRA into a local file of the library."""

    def __init__(self, library: PinnedLibrary, *, max_download_bytes: int = DEFAULT_MAX_DOWNLOAD_MB << 20,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.library = library
        self.max_download_bytes = max_download_bytes
        self.timeout_s = timeout_s
        self._index_path = library.download_dir / "urls.json"
        self._lock = threading.Lock()

    @property
    def roots(self) -> list[Path]:
        return [Path(os.path.realpath(r)) for r in self.library.base.roots]

    def resolve(self, ref: str, field: Field) -> str:
        """The absolute path of the LoRA file `ref` means. ServeError 403 for a path outside the
        LoRA folders or a control character (NUL...), 404 for a name that is not there, 413 for a
        download over the cap, 422 for a malformed URL; DownloadFailed when a URL cannot be
        fetched; TypeError for a `ref` that is not a str."""
        if not isinstance(ref, str):
            raise TypeError(f"ref must be a str, not {type(ref).__name__}")
        ref = ref.strip()
        if not ref:
            raise ServeError(422, field, "empty LoRA reference")
        _refuse_control(ref, field, ref)
        try:
            parts = urllib.parse.urlsplit(ref)
            scheme = parts.scheme.lower()
            host = parts.hostname if scheme in ("http", "https") else None
            if host is not None:
                _ = parts.port  # a port that is not a number between 0 and 65535 raises here
        except ValueError as exc:  # "http://[::1": Invalid IPv6 URL
            raise ServeError(422, field, f"{ref!r} is not a valid URL: {exc}") from None
        if scheme in ("http", "https"):
            if not host:
                raise ServeError(422, field, f"{ref!r} is not a valid URL: it names no host")
            return self.download(ref, field)
        if scheme == "file":
            return self._local(urllib.request.url2pathname(parts.path), field, ref)
        if scheme and len(scheme) > 1:
            raise ServeError(422, field, f"unsupported URL scheme {scheme!r} in {ref!r}; use a name, a path under the"
                             " LoRA folders, file://, http:// or https://")
        if os.path.isabs(ref):
            return self._local(ref, field, ref)
        if ".." in Path(ref).parts:
            return self._local(str(self.library.base.roots[0] / ref) if self.library.base.roots else ref, field, ref)
        for root in self.library.base.roots:  # a path relative to a LoRA folder, with or without its extension
            for candidate in (root / ref, *(root / (ref + ext) for ext in MODEL_EXTS)):
                if candidate.is_file():
                    return self._local(str(candidate), field, ref)
        name = ref
        if _OWNER_NAME.match(ref):  # Replicate's owner/name[/version]: the local LoRA of that name
            name = ref.split("/")[1]
        found = self.library.base.resolve(name)
        if found.entry is None:
            reasons = "; ".join(d.message for d in found.diagnostics) or f"no LoRA named {name!r}"
            raise ServeError(404, field, f"{ref!r}: {reasons} (no hub is reachable: only local LoRAs and http(s) URLs)")
        return str(found.entry.path)

    def _local(self, path: str, field: Field, ref: str) -> str:
        _refuse_control(path, field, ref)  # a file:// URL's %00 is a NUL here
        if not os.path.isfile(path):  # an absolute path or file:// URL may leave out the extension too
            path = next((path + ext for ext in MODEL_EXTS if os.path.isfile(path + ext)), path)
        real = Path(os.path.realpath(path))
        if not any(real.is_relative_to(root) for root in self.roots):
            absolute = os.path.abspath(path)
            # the listed path must be the file the OS opens: `external/../x` is `<root>/x` once
            # normalized but the OS follows the link first, to a file beside the link's target
            if real.suffix.lower() in MODEL_EXTS and Path(os.path.realpath(absolute)) == real and self._listed(absolute):
                return absolute
            raise ServeError(403, field, f"{ref!r} is outside the LoRA folders")
        if not real.is_file():
            raise ServeError(404, field, f"{ref!r}: no such LoRA file")
        if real.suffix.lower() not in MODEL_EXTS:
            raise ServeError(403, field, f"{ref!r} is not a LoRA file ({', '.join(MODEL_EXTS)})")
        absolute = os.path.abspath(path)
        return absolute if any(Path(absolute).is_relative_to(r) for r in self.library.base.roots) else str(real)

    def _listed(self, path: str) -> bool:
        """Whether the library's scan lists the file at `path` (absolute, normalized): a symlink in
        a LoRA folder, or a file in a symlinked subfolder, that leads out of the folders. The
        library lists those and `<lora:name>` applies them (library/paths.py's policy: what the
        walk followed is accepted), so a path to one is too. The library rescans once when a
        folder changed since its last scan. The caller checks that `path` (`..` normalized away)
        is the file the OS opens for the reference, so a `..` never reaches another file."""
        base = self.library.base
        if not os.path.isfile(path) or not any(Path(path).is_relative_to(r) for r in base.roots):
            return False
        if base.get(path) is None and base.is_stale():
            base.refresh()
        return base.get(path) is not None

    # ---- downloads ----------------------------------------------------------------------
    def _index(self) -> dict[str, str]:
        try:
            doc = json.loads(self._index_path.read_text(encoding="utf-8"))
            return {str(k): str(v) for k, v in doc.items()} if isinstance(doc, dict) else {}
        except (OSError, ValueError):
            return {}

    def download(self, url: str, field: Field) -> str:
        """The cached file of `url`, downloaded once; files are stored by content hash."""
        with self._lock:
            known = self._index().get(url)
        if known and (self.library.download_dir / known).is_file():
            return str(self.library.download_dir / known)
        suffix = Path(urllib.parse.urlsplit(url).path).suffix.lower()
        suffix = suffix if suffix in MODEL_EXTS else ".safetensors"
        part = self.library.download_dir / f".{os.getpid()}-{threading.get_ident()}.part"
        digest = hashlib.sha256()
        cap_mb = self.max_download_bytes / (1 << 20)
        try:
            request = urllib.request.Request(url, headers={"User-Agent": "loraprompt"})
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response, open(part, "wb") as out:
                length = response.headers.get("Content-Length")
                if length and length.isdigit() and int(length) > self.max_download_bytes:
                    raise ServeError(413, field, f"{url} is {int(length) / (1 << 20):.1f} MB, over the {cap_mb:g} MB"
                                     " download cap (--max-download-mb)")
                total = 0
                while chunk := response.read(_CHUNK):
                    total += len(chunk)
                    if total > self.max_download_bytes:
                        raise ServeError(413, field, f"{url} is over the {cap_mb:g} MB download cap (--max-download-mb)")
                    digest.update(chunk)
                    out.write(chunk)
        except ServeError:
            part.unlink(missing_ok=True)
            raise
        except (urllib.error.URLError, OSError, ValueError) as exc:
            part.unlink(missing_ok=True)
            reason = f"HTTP {exc.code} {exc.reason}" if isinstance(exc, urllib.error.HTTPError) else getattr(exc, "reason", None) or exc
            raise DownloadFailed(f"could not download {url}: {reason}") from exc
        name = digest.hexdigest() + suffix
        target = self.library.download_dir / name
        if target.exists():
            part.unlink()
        else:
            part.replace(target)
        with self._lock:
            index = self._index()
            index[url] = name
            tmp = self._index_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(index, indent=1), encoding="utf-8")
            tmp.replace(self._index_path)
        self.library.downloads.refresh()
        return str(target)


def _refuse_control(text: str, field: Field, ref: str) -> None:
    """403 naming `field` when `text` has a control character: NUL (which no file name can hold,
    and which os.path raises ValueError for), newline, escape... (spec/robustness.md rule 18)."""
    found = _CONTROL.search(text)
    if found is not None:
        raise ServeError(403, field, f"{ref!r} contains a control character ({found.group()!r}); refused")
