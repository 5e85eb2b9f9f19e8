"""The folders of a LoRA root as one walk finds them: each real folder once, its file names
sorted for prefix lookups, its model files, and what the walk met that is not there now."""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from loraprompt.library.entry import MODEL_EXTS
from loraprompt.library.order import natural_key
from loraprompt.library.sidecars import make_listing


@dataclass
class Folder:
    """One walked folder: its absolute path, its path relative to the root (`/`-separated), its
    file names (sorted by their lower-cased form, for prefix lookups), model files and whether
    it is hidden."""

    path: str
    rel: str
    names: list[str]
    models: list[str]
    hidden: bool
    outside: str | None = None  # the real folder, when a symlink led the walk out of the root
    prefixes: set[str] | None = None  # every lower-cased `<text>.` that starts the name of a file that is not a model
    lowered: list[str] | None = None  # `names` lower-cased (sorted, as `names` is sorted by them)

    def companions(self, filename: str) -> dict[str, str]:
        """A `make_listing` of the other names that start with `<stem>.` in any case (sidecars,
        previews: A1111 on Windows finds `foo.png` and `foo.json` for `Foo.safetensors`); {} when
        no file but models starts so (no sidecar or preview name is a model's)."""
        prefix = filename[: filename.rfind(".") + 1].lower()  # model names always have an extension
        if self.prefixes is None:
            self.prefixes = _prefixes({n.lower() for n in set(self.names).difference(self.models)})
        if prefix not in self.prefixes:
            return {}  # most files in a big library: one set lookup instead of a bisect and a listing
        if self.lowered is None:
            self.lowered = [n.lower() for n in self.names]
        lowered, names = self.lowered, self.names
        i = bisect.bisect_left(lowered, prefix)
        found = []
        while i < len(lowered) and lowered[i].startswith(prefix):
            if names[i] != filename:
                found.append(names[i])
            i += 1
        return make_listing(found) if found else {}


def sorted_names(names: Iterable[str]) -> list[str]:
    """`names` in `Folder.names` order: by lower-cased name."""
    return sorted(names, key=str.lower)


def _prefixes(names: set[str]) -> set[str]:
    """Each text up to and including a `.` that starts one of `names`."""
    out: set[str] = set()
    for name in names:
        i = name.find(".")
        while i >= 0:
            out.add(name[: i + 1])
            i = name.find(".", i + 1)
    return out


SYSTEM_FOLDERS = frozenset({"lost+found", "System Volume Information", "$RECYCLE.BIN"})  # a drive's own, never readable


def mount_change(path: str, dev: int, parent_dev: int | None, known: Mapping[str, int]) -> str | None:
    """"mount" when the folder `path`, on device `dev`, is on another device than its parent (a
    drive mounted there); "unmounted" when it was such a mount point (`known`: path -> its device
    then) and now shows its parent's device, not through a symlink: the drive went away and left the
    empty folder it was mounted on, so what was under it is not gone; else None."""
    if parent_dev is None:
        return None
    if dev != parent_dev:
        return "mount"
    was = known.get(path)
    return "unmounted" if was is not None and was != dev and not os.path.islink(path) else None


def mounted_again(path: str) -> bool:
    """Whether the folder `path`, found unmounted, is on another device than its parent again (or gone)."""
    try:
        return os.stat(path).st_dev != os.stat(os.path.dirname(path)).st_dev
    except OSError:
        return True


def _device(path: str) -> int | None:
    try:
        return os.stat(path).st_dev
    except OSError:
        return None


def walk(
    root: str, dir_mtimes: dict[str, int], seen: set[tuple[int, int]] | None = None, offline: list[str] | None = None,
    not_files: list[str] | None = None, *, unreadable: list[str] | None = None,
    mounts: tuple[Mapping[str, int], dict[str, int], list[str]] | None = None,
) -> list[Folder]:
    """Every folder under `root` (symlinks followed, each real folder once: `seen` holds the
    (st_dev, st_ino) of the folders walked, shared by the walks of several roots). A symlink whose
    target cannot be reached (`os.stat` fails where `os.lstat` did not: a drive unplugged from
    `models/Lora/usb`) is put in `offline`: what was under it is not gone. A model name that is not
    a regular file (a FIFO named `x.safetensors` would block its reader forever) is put in
    `not_files`, never in a folder's models. A folder that exists but cannot be listed (no
    permission, an I/O error of a failing drive or share) is put in `unreadable` (its files are not
    gone either); a drive's own folders (`lost+found`, ...) are not walked.
    `mounts`: (the mount points known from the last scan, the ones found now, the unmounted ones):
    each folder is judged by `mount_change`; an unmounted one is not walked, like a dangling symlink."""
    out: list[Folder] = []
    seen = set() if seen is None else seen
    stack: list[tuple[str, str, bool, int | None]] = [(root, "", False, _device(os.path.dirname(root)) if mounts else None)]
    while stack:
        path, rel, hidden, parent_dev = stack.pop()
        try:
            st = os.stat(path)
            change = mount_change(path, st.st_dev, parent_dev, mounts[0]) if mounts else None
            if change is not None and mounts:
                mounts[1][path] = st.st_dev if change == "mount" else mounts[0][path]
                if change == "unmounted":
                    mounts[2].append(path)
                    continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            dir_mtimes[path] = st.st_mtime_ns
            with os.scandir(path) as it:
                items = list(it)
        except (FileNotFoundError, NotADirectoryError):  # gone since its parent was listed: deleted
            continue
        except OSError:
            if unreadable is not None:
                unreadable.append(path)
            continue
        models: list[str] = []
        subdirs: list[str] = []
        for item in items:
            try:
                is_dir = item.is_dir()
            except OSError:
                continue
            if is_dir:
                if item.name not in SYSTEM_FOLDERS:
                    subdirs.append(item.name)
                continue
            if offline is not None and item.is_symlink() and not os.path.exists(item.path):  # one stat, links only
                offline.append(item.path)
            elif item.name.lower().endswith(MODEL_EXTS) and "." in item.name.lstrip("."):  # splitext's view: a
                if _regular(item):  # leading dot starts no extension (".pt" is a name); one C call per file
                    models.append(item.name)
                elif not_files is not None:
                    not_files.append(item.path)
        names = sorted_names(item.name for item in items)
        out.append(Folder(path, rel, names, models, hidden))  # scan_root sorts the entries
        for name in sorted(subdirs, key=natural_key, reverse=True):
            stack.append((os.path.join(path, name), f"{rel}/{name}" if rel else name, hidden or name.startswith("."), st.st_dev))
    return out


def listing_error(path: str) -> str | None:
    """Why the folder `path` cannot be listed now (the system's words), or None when it can."""
    try:
        with os.scandir(path):
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def _regular(item: os.DirEntry[str]) -> bool:
    """Whether `item` is a regular file (after symlinks): the directory entry's type, no call for one."""
    try:
        return item.is_file()
    except OSError:
        return False


def distinct_roots(dirs: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """The absolute paths of `dirs`, each real folder once: a folder given twice, or through a
    symlink (`models/LyCORIS` -> `models/Lora`), is kept where it first comes; one inside another
    root is dropped (the other's walk lists its files). A1111 walks each of its two folders, so it
    meets those files twice, but one name keeps one file: the user sees each once, as here."""
    given = [(Path(os.path.abspath(d)), os.path.join(os.path.realpath(d), "")) for d in dirs]
    out: list[Path] = []
    kept: list[str] = []
    for path, real in given:
        if real in kept or any(real != other and real.startswith(other) for _, other in given):
            continue
        out.append(path)
        kept.append(real)
    return out
