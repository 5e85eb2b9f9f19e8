"""The gallery's server side, without any web framework: card documents, details, thumbnails,
prompt insertion and metadata saving over one `Library`. Routes (`routes.py`) call into this."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlencode

from loraprompt.errors import AdapterFileError, LoraPromptError
from loraprompt.library import DuplicateGroup, Entry, Library
from loraprompt.library.cache import default_cache_dir
from loraprompt.library.cards import FAMILY_LABELS, json_for_script
from loraprompt.library.details import file_details
from loraprompt.library.resolve import TagChoice, tag_hash
from loraprompt.library.scanner import natural_key
from loraprompt.library.sidecars import SD_VERSIONS, user_json_path
from loraprompt.syntax import LoraActivation
from loraprompt.ui import cards
from loraprompt.ui.gallery_insert import check_strength, means_file, tag_choice, toggle_names, toggle_tag
from loraprompt.ui.gallery_thumbs import ThumbCache, file_tag, version_tag

EDITABLE = frozenset(cards.USER_KEYS)
# the page's sorts a first page can be chosen by (others take the library's order): the page
# sorts by name with a numeric, case-insensitive collator, which natural_key follows
FIRST_SORTS: dict[str, Callable[[Entry], Any]] = {
    "name": lambda e: natural_key(e.name), "date": lambda e: e.mtime_ns, "size": lambda e: e.size,
}
BACKGROUND_PAUSE = 1.0  # the background hashing rests this many times as long as it read each file
_STARTED = time.time_ns()  # makes the usage stamp differ across server restarts


def usage_stamp(library: Library) -> str:
    """A value that changes whenever a generation is recorded (O(1); the page reloads the usage then)."""
    return f"{_STARTED}-{library.usage_stamp}"


class NotFound(LookupError):
    """No card, preview or file answers the request."""


class BadRequest(ValueError):
    """The request's values are wrong; the message says which."""


class _Snapshot:
    """The cards of one library version. Records are made on demand (the first page of a big
    library is served before the other 100,000 records exist) and kept; the full list's JSON is
    serialised once."""

    def __init__(self, service: GalleryService, version: int, entries: tuple[Entry, ...], generation: int, builtin: bool) -> None:
        self.service = service
        self.version = version  # the library's version it was built from
        self.entries = entries
        self.generation = generation
        self.builtin = builtin  # names chosen for A1111's built-in handler
        self.by_id: Mapping[str, Entry] = cards.card_ids(entries, [str(r) for r in service.library.roots])
        self.ids: Mapping[str, str] = {e.path: card_id for card_id, e in self.by_id.items()}  # entry path -> card id
        self.stems: Counter[str] = Counter(e.name for e in entries)  # how many files share each stem
        self._choices: dict[str, TagChoice] = {}
        self._records: dict[str, dict[str, Any]] = {}
        self._json: str | None = None
        self._lock = threading.Lock()
        self._orders: dict[str, list[Entry]] = {}
        self._orders_lock = threading.Lock()

    def choice(self, entry: Entry) -> TagChoice:
        """What the card of `entry` inserts."""
        found = self._choices.get(entry.path)
        if found is None:
            found = self._choices[entry.path] = tag_choice(self.service.library, entry, self.stems, self.builtin)
        return found

    def record(self, entry: Entry) -> dict[str, Any]:
        """The card record of `entry`."""
        found = self._records.get(entry.path)
        if found is None:
            card_id = self.ids[entry.path]
            choice = self.choice(entry)
            found = cards.card_record(entry, card_id, self.service._thumb_url(card_id, entry), choice.name, choice.note)
            self._records[entry.path] = found
        return found

    def order(self, sort: str) -> list[Entry] | None:
        """The entries in ascending `FIRST_SORTS[sort]` order, sorted once per snapshot (~0.2 s at
        100,000 for names: every page load's first page after that is a slice); None for a sort
        the first page does not follow."""
        key = FIRST_SORTS.get(sort)
        if key is None:
            return None
        with self._orders_lock:
            found = self._orders.get(sort)
            if found is None:
                found = self._orders[sort] = sorted(self.entries, key=key)
            return found

    @property
    def records(self) -> tuple[dict[str, Any], ...]:
        """Every card record, in the library's order."""
        return tuple(self.record(e) for e in self.entries)

    def records_json(self) -> str:
        """`records` as escaped JSON, serialised once per snapshot."""
        with self._lock:
            if self._json is None:
                self._json = json_for_script(self.records)
            return self._json


class GalleryService:
    """Card data and actions for the entries of `library`; `loaded_family()` names the family
    (sd1/sd2/sdxl) of the model loaded now, or None, and is asked on every request."""

    def __init__(
        self,
        library: Library,
        loaded_family: Callable[[], str | None] | None = None,
        thumb_dir: str | Path | None = None,
        builtin_names: Callable[[], bool] | None = None,
    ) -> None:
        self.library = library
        self.loaded_family = loaded_family or (lambda: None)
        self.builtin_names = builtin_names or (lambda: False)  # True: A1111's built-in Lora handles the tags
        self.thumbs = ThumbCache(thumb_dir if thumb_dir is not None else default_cache_dir() / "thumbs")
        self._lock = threading.Lock()
        self._snapshot: _Snapshot | None = None
        self._generation = 0
        self._background: threading.Thread | None = None
        self._stop = threading.Event()
        self._hashing = {"done": 0, "total": 0, "running": False}
        self._groups: tuple[DuplicateGroup, ...] = ()
        self._groups_version = -1  # the library version the groups were found for
        self._groups_stamp = 0

    # ---- reading ----------------------------------------------------------------------------
    def snapshot(self) -> _Snapshot:
        """Card records for the library as it is now, rebuilt only when its entries changed."""
        version = self.library.current_version()
        builtin = bool(self.builtin_names())
        old = self._snapshot
        if old is not None and (old.version, old.builtin) == (version, builtin):
            return old  # a poll costs the same with 10 or 100,000 cards
        with self._lock:
            old = self._snapshot
            version = self.library.version
            if old is not None and (old.version, old.builtin) == (version, builtin):
                return old
            self._generation += 1
            self._snapshot = _Snapshot(self, version, tuple(self.library.entries), self._generation, builtin)
            return self._snapshot

    def _thumb_url(self, card_id: str, entry: Entry) -> str | None:
        """The thumbnail URL, versioned by the image file's `version_tag` so browsers refetch a
        replaced image (even one of the same size with the old mtime kept)."""
        if not entry.previews:
            has_cover = entry.summary.has_cover_image and not entry.error
            return "thumb?" + urlencode({"id": card_id, "v": version_tag(entry.version)}) if has_cover else None
        try:
            version = file_tag(entry.previews[0])
        except OSError:
            version = version_tag(entry.version)
        return "thumb?" + urlencode({"id": card_id, "v": version})

    def family(self) -> str | None:
        """The loaded model's family, or None when it is unknown."""
        family = self.loaded_family()
        return family if family in FAMILY_LABELS else None

    def _document_head(self, snap: _Snapshot) -> dict[str, Any]:
        report = self.library.last_report
        notes = []
        if report.pending:
            notes.append(f"{len(report.pending)} file(s) still being written; they appear once complete")
        if report.offline_roots or report.offline_links or report.unmounted:
            notes.append("not reachable, cards kept: " + ", ".join((*report.offline_roots, *report.offline_links, *report.unmounted)))
        if report.unreadable:
            notes.append("folders that cannot be listed (permissions or a failing drive), cards kept: "
                         + ", ".join(report.unreadable))
        if report.not_files:
            notes.append("not regular files, left out: " + ", ".join(report.not_files))
        return {"family": self.family(), "generation": snap.generation, "notice": "; ".join(notes)}

    def cards_document(self) -> dict[str, Any]:
        """Everything the page needs to draw and filter the cards."""
        snap = self.snapshot()
        return {**self._document_head(snap), "cards": list(snap.records)}

    def cards_json(self) -> str:
        """`cards_document()` as escaped JSON text, reusing the snapshot's serialised cards."""
        snap = self.snapshot()
        return json_for_script(self._document_head(snap))[:-1] + ',"cards":' + snap.records_json() + "}"

    def first_cards(self, limit: int, sort: str = "name", descending: bool = False) -> tuple[dict[str, Any], list[Entry]]:
        """The first `limit` cards in the page's sort order (`FIRST_SORTS`; others: the library's
        order) as a cards document marked `partial` with the `total`, and their entries: what a
        page shows while the whole list (`cards_json`) is made, which takes seconds at 100,000."""
        snap = self.snapshot()
        order = snap.order(sort)
        if order is None:
            first = list(snap.entries[:limit])
        else:
            first = order[-limit:][::-1] if descending else order[:limit]
        doc = {**self._document_head(snap), "cards": [snap.record(e) for e in first], "partial": len(first) < len(snap.entries),
               "total": len(snap.entries)}
        return doc, first

    def state(self) -> dict[str, Any]:
        """What the page polls to notice a model switch, a changed folder, new usage or new
        duplicate groups; its cost does not grow with the number of cards."""
        snap = self.snapshot()
        self.start_background()
        return {"family": self.family(), "generation": snap.generation, "usage_stamp": usage_stamp(self.library),
                "hashing": dict(self._hashing), "duplicates_stamp": self._groups_stamp}

    # ---- background: usage history by content, duplicate groups, thumbnail pruning ------------
    def start_background(self) -> None:
        """Hash what is needed in a background thread, once per library version: move usage kept
        by path to content hashes, then find the duplicate groups (`duplicates()`), then prune the
        thumbnail cache. Progress is in `state()["hashing"]`."""
        with self._lock:
            busy = self._background is not None and self._background.is_alive()
            if busy or self._groups_version == self.library.version or self._stop.is_set():
                return
            self._groups_version = self.library.version
            self._hashing = {"done": 0, "total": 0, "running": True}
            self._background = threading.Thread(target=self._run_background, name="loraprompt-gallery-hashing", daemon=True)
            self._background.start()

    def _run_background(self) -> None:
        try:
            self.library.migrate_usage()

            last = time.monotonic()

            def progress(done: int, total: int) -> None:
                # at most half of the time spent reading: a big library's hashing must not hog the disk
                nonlocal last
                self._hashing = {"done": done, "total": total, "running": True}
                self._stop.wait(min(2.0, time.monotonic() - last) * BACKGROUND_PAUSE)
                last = time.monotonic()

            groups = tuple(self.library.duplicates(progress, self._stop))
            with self._lock:
                if groups != self._groups:
                    self._groups = groups
                    self._groups_stamp += 1
            self.thumbs.prune()
        except Exception:  # a background convenience: never take the gallery down
            import logging

            logging.getLogger("loraprompt").exception("gallery: finding duplicates failed")
        finally:
            self._hashing = {**self._hashing, "running": False}

    def stop_background(self, timeout: float = 10.0) -> None:
        """Stop the background hashing (at the next file) and wait for it."""
        self._stop.set()
        thread = self._background
        if thread is not None:
            thread.join(timeout)

    def duplicates(self) -> dict[str, Any]:
        """The duplicate groups found so far, as card ids: {"groups": [{"kind", "ids"}], "hashing"}."""
        snap = self.snapshot()
        groups = [{"kind": g.kind, "ids": [snap.ids[e.path] for e in g.entries if e.path in snap.ids]} for g in self._groups]
        return {"groups": [g for g in groups if len(g["ids"]) > 1], "hashing": dict(self._hashing), "stamp": self._groups_stamp}

    def refresh(self) -> str:
        """Rescan the folders and return the new cards document as JSON text."""
        self.library.refresh()
        return self.cards_json()

    def entry(self, card_id: object) -> Entry:
        """The entry of a card id; NotFound for anything else."""
        if not isinstance(card_id, str):
            raise NotFound("no such card")
        found = self.snapshot().by_id.get(card_id)
        if found is None:
            raise NotFound(f"no card {card_id[:200]!r}")
        return found

    def preview_file(self, card_id: object) -> tuple[Path, str]:
        """The preview image of a card and its content type, checked by the library's path policy."""
        entry = self.entry(card_id)
        for preview in entry.previews:
            ref = self.library.file_ref(preview)
            found = self.library.safe_image(ref, kind="preview") if ref is not None else None
            if found is not None:
                return found
        raise NotFound(f"{entry.relpath}: no preview image")

    def thumbnail(self, card_id: object) -> Path:
        """The cached thumbnail of a card's preview file, else of the cover image in its header."""
        try:
            path, _ = self.preview_file(card_id)
        except NotFound:
            entry = self.entry(card_id)
            if not entry.summary.has_cover_image:
                raise
            key = f"{entry.path}\0{version_tag(entry.version)}\0cover"
            return self.thumbs.thumbnail_of(key, lambda: self._cover(entry), f"{entry.relpath} (embedded cover image)")
        return self.thumbs.thumbnail(path)

    def _cover(self, entry: Entry) -> bytes:
        try:
            cover = file_details(entry.path)["cover"]
        except (LoraPromptError, OSError) as exc:
            raise BadRequest(f"{entry.relpath}: cannot read the header ({exc})") from exc
        if cover is None:
            raise BadRequest(f"{entry.relpath}: the embedded cover image is not valid base64 of an image")
        return bytes(cover[0])

    def details(self, card_id: object) -> dict[str, Any]:
        """The details view (escaped HTML), the preview's URL (relative to the routes) and the
        editor's current values."""
        entry = self.entry(card_id)
        try:  # versioned by the image file, as thumbnails are: a replaced preview is fetched again
            path, _ = self.preview_file(card_id)
            preview = "preview?" + urlencode({"id": card_id, "v": file_tag(path)})
        except (NotFound, OSError):
            preview = None
        if preview is None and entry.summary.has_cover_image:
            preview = self._thumb_url(str(card_id), entry)
        hashes: dict[str, str | None] = {}
        header_rows: list[tuple[str, str]] = []
        if not entry.offline and not entry.error:
            try:
                hashes = self.library.hashes(entry)
            except (LoraPromptError, OSError) as exc:  # changed since the scan (being copied over): a Problem row
                reason = exc.reason if isinstance(exc, AdapterFileError) else getattr(exc, "strerror", None) or str(exc)
                entry = replace(entry, error=f"cannot be read now, it changed since the scan: {reason}")
            try:
                header_rows = file_details(entry.path)["rows"] if entry.kind == "safetensors" else []
            except (LoraPromptError, OSError):
                header_rows = []
        return {"html": cards.details_html(entry, hashes, header_rows), "preview": preview,
                "user": cards.user_values(entry), "sd_versions": list(SD_VERSIONS)}

    # ---- actions ----------------------------------------------------------------------------
    def insert(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Toggle a card's tag in the prompt: {id, te, unet, activation, prompt, negative}."""
        entry = self.entry(body.get("id"))
        prompt, negative = body.get("prompt"), body.get("negative")
        if not isinstance(prompt, str) or not (negative is None or isinstance(negative, str)):
            raise BadRequest("prompt and negative must be text")
        try:
            te = check_strength("text-encoder", body.get("te"))
            unet = check_strength("UNet", body.get("unet"))
        except ValueError as exc:
            raise BadRequest(f"{entry.name}: {exc}") from exc
        choice = self.snapshot().choice(entry)
        short = None
        if choice.by_hash:
            short, why = tag_hash(self.library, entry)
            if short is None:
                raise BadRequest(f"{entry.relpath}: {why}; its name cannot be written in a tag: rename the file")
        try:
            result = toggle_tag(
                prompt, LoraActivation(choice.name, te=te, unet=unet, hash=short), toggle_names(self.library, entry, choice),
                activation_text=entry.activation_text if body.get("activation") is True else "", negative=negative,
                negative_text=str(entry.user.get("negative text") or ""), means=means_file(self.library, entry),
            )
        except ValueError as exc:  # a name no tag can carry and no hash= to stand for it (A1111's built-in)
            raise BadRequest(f"{entry.relpath}: {choice.note or exc}") from exc
        message = f"{result.action.capitalize()} {result.tag}" + (f". {choice.note}" if choice.note else "")
        return {"prompt": result.prompt, "negative": result.negative, "action": result.action, "tag": result.tag,
                "message": message}

    def save_metadata(self, card_id: object, values: object) -> dict[str, Any]:
        """Write the editor's values into the card's `<stem>.json` (other keys kept)."""
        entry = self.entry(card_id)
        if not isinstance(values, Mapping):
            raise BadRequest("values must be an object")
        unknown = sorted(str(k) for k in values if k not in EDITABLE)
        if unknown:
            raise BadRequest(f"{entry.name}.json: the editor does not write {', '.join(unknown)}")
        sd_version = values.get("sd version")
        if sd_version is not None and sd_version not in SD_VERSIONS:
            raise BadRequest(f"{entry.name}.json: 'sd version' must be one of {', '.join(SD_VERSIONS)}")
        try:
            updated = self.library.write_user_metadata(entry, dict(values))
        except LoraPromptError as exc:
            raise BadRequest(str(exc)) from exc
        snap = self.snapshot()
        card_id = snap.ids[updated.path]
        record = snap.record(snap.by_id[card_id])
        written = user_json_path(Path(updated.path)).name  # `Foo.JSON` when that is the file read and written
        return {"card": record, "file": PurePosixPath(updated.relpath).with_name(written).as_posix()}
