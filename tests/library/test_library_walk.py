"""The walk of the LoRA folders as A1111 sees them: sidecars in any case, its walk order,
roots given twice, unplugged links and files that are not regular files."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from loraprompt.library import Library

from .conftest import write_lora

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16


def test_sidecars_whose_stem_differs_in_case_are_found(lora_dir: Path, tmp_path: Path) -> None:
    """A1111 on Windows finds `foo.png` and `foo.json` for `Foo.safetensors`: the stem's case
    is ignored as the extension's is, the exact spelling winning where both exist; names that
    only share a prefix in another case (`FOOD.png`, `fo.png`) are not companions."""
    write_lora(lora_dir / "Foo.safetensors")
    (lora_dir / "foo.png").write_bytes(PNG)
    (lora_dir / "foo.json").write_text(json.dumps({"activation text": "foo style"}))
    (lora_dir / "FOO.txt").write_text("a description")
    for other in ("FOOD.png", "fo.png", "a.png", "zzz.json"):
        (lora_dir / other).write_bytes(PNG)
    write_lora(lora_dir / "bar.safetensors", seed=1)
    (lora_dir / "Bar.png").write_bytes(PNG)
    (lora_dir / "bar.png").write_bytes(PNG)
    lib = Library([lora_dir], cache_dir=tmp_path / "c", workers=0)
    foo = next(e for e in lib.entries if e.name == "Foo")
    assert [Path(p).name for p in foo.previews] == ["foo.png"]
    assert foo.user == {"activation text": "foo style"} and foo.description == "a description"
    bar = next(e for e in lib.entries if e.name == "bar")
    assert Path(bar.previews[0]).name == "bar.png"


def _a1111_walk(root: Path) -> list[str]:
    """A1111 v1.10.1's `modules/util.py` `walk_files` (with its `natural_sort_key`), relative to
    `root`: os.walk's folders sorted by the natural key of their path, then each one's files."""
    import os
    import re

    def natural_sort_key(s: str, regex: re.Pattern[str] = re.compile("([0-9]+)")) -> list[object]:
        return [int(text) if text.isdigit() else text.lower() for text in regex.split(s)]

    out = []
    for folder, _, files in sorted(os.walk(root, followlinks=True), key=lambda x: natural_sort_key(x[0])):
        for filename in sorted(files, key=natural_sort_key):
            if os.path.splitext(filename)[1].lower() in (".pt", ".ckpt", ".safetensors"):
                out.append(Path(folder, filename).relative_to(root).as_posix())
    return out


def test_walk_order_and_the_stem_that_wins_are_a1111s(lora_dir: Path, tmp_path: Path) -> None:
    """Mirrors A1111's `modules/util.py` `walk_files` (folders by `natural_sort_key` of their path,
    then the files of each) and `extensions-builtin/Lora/networks.py` `process_network_files` (the
    later file of a stem wins): a folder's own files come before its subfolders', `a1/` before
    `a/b/`, case and `ß` compared with `str.lower`, `٣` not a digit. The collision warning names
    that file, and a warm scan (ranks from the saved order) and a cache saved in the old relpath
    order give the same."""
    import json

    rels = ["zeta.safetensors", "anime/zeta.safetensors", "a/b/dup.safetensors", "a1/dup.safetensors", "a/dup.safetensors",
            "Lora10.safetensors", "lora9.ckpt", "a-x/y.pt", "a_x/y.pt", "straße.safetensors", "strasse1.safetensors",
            "x٣.safetensors", "x3.safetensors", "B/C.safetensors", "b2/c.safetensors"]
    for i, rel in enumerate(rels):
        write_lora(lora_dir / rel, seed=i)
    expected = _a1111_walk(lora_dir)
    assert expected[:4] == ["lora9.ckpt", "Lora10.safetensors", "strasse1.safetensors", "straße.safetensors"]  # the root's own first
    lib = Library([lora_dir], cache_dir=tmp_path / "c", workers=0)
    assert [e.relpath for e in lib.entries] == expected
    for stem in ("zeta", "dup"):
        chosen = [rel for rel in expected if rel.rsplit("/", 1)[-1].rsplit(".", 1)[0] == stem][-1]
        r = lib.resolve(stem, profile="a1111")
        assert r.entry is not None and r.entry.relpath == chosen
        (diag,) = r.diagnostics
        assert diag.code == "W-NAME-STEM-COLLISION" and f"using {chosen} as A1111 does" in diag.message
    assert [e.relpath for e in Library([lora_dir], cache_dir=tmp_path / "c", workers=0).entries] == expected
    (cache_file,) = (tmp_path / "c").glob("library-*.json")
    doc = json.loads(cache_file.read_text())
    by_relpath = sorted(doc["files"], key=lambda p: p.lower())  # saved in another order, marked as before
    cache_file.write_text(json.dumps({**doc, "in_order": True, "files": {p: doc["files"][p] for p in by_relpath}}))
    lib = Library([lora_dir], cache_dir=tmp_path / "c", workers=0)
    assert lib.last_report.files_read == 0 and [e.relpath for e in lib.entries] == expected


def test_a_root_given_twice_linked_or_nested_lists_each_file_once(tmp_path: Path) -> None:
    """models/LyCORIS -> models/Lora, a root given twice, a root inside another, a link inside one
    root to another: A1111 walks both folders but keeps one file per name, so its user sees each
    file once; so does the library (no stem collision, no same-file duplicate group)."""
    models = tmp_path / "models"
    lora, other = models / "Lora", models / "Other"
    write_lora(lora / "detail.safetensors")
    write_lora(lora / "sub" / "deep.safetensors", seed=1)
    write_lora(other / "far.safetensors", seed=2)
    (models / "LyCORIS").symlink_to(lora)
    (lora / "to_other").symlink_to(other)
    lib = Library([lora, models / "LyCORIS", str(lora) + "/", lora / "sub", other], cache_dir=tmp_path / "c", workers=0)
    assert lib.roots == [lora, other]
    assert [e.relpath for e in lib.entries] == ["detail.safetensors", "sub/deep.safetensors", "to_other/far.safetensors"]
    r = lib.resolve("detail")
    assert r.entry is not None and r.diagnostics == ()
    assert lib.duplicates() == []
    assert lib.refresh().removed == () and len(lib.entries) == 3


def test_an_unplugged_drive_linked_into_the_folder_keeps_its_entries_and_cache(tmp_path: Path) -> None:
    """gallery.md 'a missing drive never deletes entries' (LM #1108) for a drive linked into
    models/Lora, as a folder or as one file: while the link dangles its entries stay, marked
    offline, in a new process too, and their cache records (hashes included) are kept, so
    plugging it back in reads nothing again."""
    lora, media = tmp_path / "Lora", tmp_path / "media"
    write_lora(lora / "local.safetensors")
    write_lora(media / "loras" / "onusb.safetensors", seed=1)
    write_lora(media / "single.safetensors", seed=2)
    (lora / "usb").symlink_to(media / "loras")
    (lora / "single.safetensors").symlink_to(media / "single.safetensors")
    lib = Library([lora], cache_dir=tmp_path / "c", workers=0)
    onusb = lib.get(lora / "usb" / "onusb.safetensors")
    assert onusb is not None
    hashes = lib.hashes(onusb)
    relpaths = ["local.safetensors", "single.safetensors", "usb/onusb.safetensors"]
    assert [e.relpath for e in lib.entries] == relpaths
    media.rename(tmp_path / "unplugged")
    report = lib.refresh()
    assert report.removed == () and report.offline_links == (str(lora / "single.safetensors"), str(lora / "usb"))
    assert [(e.relpath, e.offline) for e in lib.entries] == [(relpaths[0], False), (relpaths[1], True), (relpaths[2], True)]
    restarted = Library([lora], cache_dir=tmp_path / "c", workers=0)
    assert [(e.relpath, e.offline) for e in restarted.entries] == [(relpaths[0], False), (relpaths[1], True), (relpaths[2], True)]
    (tmp_path / "unplugged").rename(media)
    assert lib.is_stale()
    lib.refresh()
    assert lib.last_report.files_read == 0 and [(e.relpath, e.offline) for e in lib.entries] == [(r, False) for r in relpaths]
    onusb = lib.get(lora / "usb" / "onusb.safetensors")
    assert onusb is not None and lib.hashes(onusb) == hashes


def test_a_fifo_named_like_a_model_is_left_out_never_opened(lora_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A FIFO named `pipe.safetensors` blocked the scan forever (opening it waits for a writer; it
    would hang A1111's start-up too): the walk leaves it out, the report and one log line name
    it, and reading its header directly is refused at once instead of blocking."""
    import os
    import threading

    from loraprompt.errors import AdapterFileError
    from loraprompt.library.safetensors_header import read_prefix

    write_lora(lora_dir / "a.safetensors")
    os.mkfifo(lora_dir / "pipe.safetensors")
    (lora_dir / "linked.safetensors").symlink_to(lora_dir / "pipe.safetensors")
    box: dict[str, object] = {}

    def scan() -> None:
        lib = Library([lora_dir], cache_dir=tmp_path / "c", workers=0)
        box["lib"] = lib
        box["refresh"] = lib.refresh()
        try:
            read_prefix(str(lora_dir / "pipe.safetensors"))
        except AdapterFileError as exc:
            box["refused"] = str(exc)

    with caplog.at_level(logging.WARNING, logger="loraprompt"):
        worker = threading.Thread(target=scan, daemon=True)
        worker.start()
        worker.join(20)
        if worker.is_alive():  # unblock it: open the FIFO for writing once
            os.close(os.open(lora_dir / "pipe.safetensors", os.O_WRONLY | os.O_NONBLOCK))
            pytest.fail("the scan blocked on the FIFO")
    lib = box["lib"]
    assert isinstance(lib, Library) and [e.name for e in lib.entries] == ["a"]
    fifos = (str(lora_dir / "linked.safetensors"), str(lora_dir / "pipe.safetensors"))
    assert sorted(lib.last_report.not_files) == list(fifos)
    # logged once each: the second refresh found the same ones
    assert sorted(r.getMessage().split(":")[0] for r in caplog.records if "not a regular file" in r.getMessage()) == list(fifos)
    assert "not a regular file" in str(box["refused"])


def test_a_folder_that_cannot_be_listed_keeps_its_entries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """A subfolder that exists but cannot be listed (no permission: a folder a container made as
    root; an I/O error of a failing drive or share) was skipped silently: its LoRAs vanished from
    the library with their cached hashes, as if deleted. They stay, marked offline (in a new
    process too, from the cache); the report, the scan command (exit 1) and one log line name the
    folder; the library is not stale while it stays unreadable (no rescan every check), and when it
    can be listed again its files are back without reading them again. A drive's own `lost+found`
    is not walked. Permissions do not stop root, so as root the listing fails by injection: os.scandir
    raises what the kernel gives a failing drive (EIO)."""
    import errno
    import os
    import time

    from loraprompt.cli import main

    lora, sub = tmp_path / "Lora", tmp_path / "Lora" / "sub"
    write_lora(lora / "top.safetensors")
    write_lora(sub / "deep.safetensors", seed=1)
    (lora / "lost+found").mkdir()
    past = time.time() - 100
    for folder in (lora, sub, lora / "lost+found"):  # settled folders: no racy mtime keeps the library stale
        os.utime(folder, (past, past))
    cache = tmp_path / "c"
    lib = Library([lora], cache_dir=cache, workers=0)
    deep = lib.get(sub / "deep.safetensors")
    assert deep is not None
    hashes = lib.hashes(deep)
    real_scandir, broken = os.scandir, {str(sub), str(lora / "lost+found")}

    def scandir(path: object = ".") -> object:
        if str(path) in broken:
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))
        return real_scandir(path)  # type: ignore[arg-type]

    as_root = os.geteuid() == 0
    if as_root:
        monkeypatch.setattr(os, "scandir", scandir)
    else:
        os.chmod(sub, 0)
        os.chmod(lora / "lost+found", 0)
    why = "Input/output error" if as_root else "Permission denied"
    try:
        os.utime(lora, (past + 50, past + 50))  # what removing or chmod-ing an entry does to the folder's mtime
        assert lib.is_stale()
        with caplog.at_level(logging.WARNING, logger="loraprompt"):
            report = lib.refresh()
        assert report.removed == () and report.unreadable == (str(sub),)
        assert [(e.relpath, e.offline) for e in lib.entries] == [("top.safetensors", False), ("sub/deep.safetensors", True)]
        assert [r.getMessage() for r in caplog.records] == [
            f"{sub}: this folder cannot be listed ({why}); its LoRAs are kept from the last scan, offline"]
        assert not lib.is_stale()
        restarted = Library([lora], cache_dir=cache, workers=0)
        assert [(e.relpath, e.offline) for e in restarted.entries] == [(e.relpath, e.offline) for e in lib.entries]
        assert main(["scan", str(lora), "--cache-dir", str(cache)]) == 1
    finally:
        monkeypatch.undo()
        os.chmod(sub, 0o755)
    assert lib.is_stale()
    lib.refresh()
    assert [(e.relpath, e.offline) for e in lib.entries] == [("top.safetensors", False), ("sub/deep.safetensors", False)]
    assert lib.last_report.files_read == 0 and lib.last_report.unreadable == ()
    back = lib.get(sub / "deep.safetensors")
    assert back is not None and lib.hashes(back, compute=False) == hashes


def test_a_drive_unmounted_from_a_plain_folder_keeps_its_entries_and_hashes(tmp_path: Path) -> None:
    """LM #1108 for a drive mounted on a plain folder (`models/Lora/usb`, no symlink): unplugged, it
    leaves the empty folder it was mounted on, which a scan took for "files deleted", dropping their
    records and hashes. The cache now keeps each mount point's device; a folder that was one and now
    shows its parent's device is an offline place, as a dangling symlink is. No test can mount: the
    scan that saw the drive is the real one, its cache's record of the mount point is written as that
    scan would have (another device than the parent's), then the drive's files go."""
    import os

    lora = tmp_path / "Lora"
    usb = lora / "usb"
    write_lora(lora / "near.safetensors")
    write_lora(usb / "far.safetensors", seed=1)
    lib = Library([lora], cache_dir=tmp_path / "c", workers=0, auto_check_s=0)
    far = lib.get(usb / "far.safetensors")
    assert far is not None
    hashes = lib.hashes(far)
    (cache_file,) = (tmp_path / "c").glob("library-*.json")
    doc = json.loads(cache_file.read_text())
    assert doc.get("mounts") in ({}, None)  # no folder is on another device than its parent here
    cache_file.write_text(json.dumps({**doc, "mounts": {str(usb): os.stat(usb).st_dev + 1}}))
    (usb / "far.safetensors").unlink()  # unplugged: the folder it was mounted on is empty
    for folder in (lora, usb):  # out of the filesystem's clock tick, so only a change makes the scan stale
        os.utime(folder, ns=(1, os.stat(folder).st_mtime_ns - 60 * 10**9))
    restarted = Library([lora], cache_dir=tmp_path / "c", workers=0, auto_check_s=0)
    assert [(e.relpath, e.offline) for e in restarted.entries] == [("near.safetensors", False), ("usb/far.safetensors", True)]
    report = restarted.last_report
    assert report.unmounted == (str(usb),) and report.offline_links == ()
    assert not restarted.is_stale()  # the folder exists: only its device coming back makes the scan stale
    saved = json.loads(cache_file.read_text())
    assert saved["files"][str(usb / "far.safetensors")][2]["hashes"] == hashes
    assert saved["mounts"] == {str(usb): os.stat(usb).st_dev + 1}  # still known while the drive is away
    usb.rmdir()  # the mount point itself deleted: its files are gone for good
    report = restarted.refresh()
    assert report.removed == (str(usb / "far.safetensors"),) and report.unmounted == ()
    assert [e.relpath for e in restarted.entries] == ["near.safetensors"]
    assert json.loads(cache_file.read_text())["mounts"] == {}


def test_mount_change_on_real_folders(tmp_path: Path) -> None:
    """`folders.mount_change` judged on real stat results: a plain folder is nothing; one that was a
    mount point (another device then) and shows its parent's device now is unmounted, unless the
    walk reached it through a symlink; a real mount point of this machine, when there is one, is a mount."""
    import os

    from loraprompt.library.folders import mount_change, mounted_again

    usb = tmp_path / "Lora" / "usb"
    usb.mkdir(parents=True)
    (tmp_path / "Lora" / "link").symlink_to(usb)
    dev, parent_dev = os.stat(usb).st_dev, os.stat(usb.parent).st_dev
    assert mount_change(str(usb), dev, parent_dev, {}) is None
    assert mount_change(str(usb), dev, parent_dev, {str(usb): dev + 1}) == "unmounted"
    assert mount_change(str(usb.parent / "link"), dev, parent_dev, {str(usb.parent / "link"): dev + 1}) is None
    assert mount_change(str(usb), dev, None, {str(usb): dev + 1}) is None  # the parent's device unknown
    assert not mounted_again(str(usb)) and mounted_again(str(tmp_path / "gone"))
    real = next((p for p in ("/proc", "/sys", "/dev") if os.path.ismount(p) and os.stat(p).st_dev != os.stat("/").st_dev), None)
    if real is not None:
        assert mount_change(real, os.stat(real).st_dev, os.stat("/").st_dev, {}) == "mount" and mounted_again(real)
