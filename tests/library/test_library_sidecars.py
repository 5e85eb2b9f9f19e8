"""A1111's `<stem>.json`: written compatibly, unknown keys kept, bad values refused."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch

from loraprompt.errors import LoraPromptError
from loraprompt.library import Library
from tests.fixtures.replace import MODES, replace_keeping_stat

from .conftest import write_lora


@pytest.fixture
def lib(lora_dir: Path, tmp_path: Path) -> Library:
    write_lora(lora_dir / "sub" / "a.safetensors")
    return Library([lora_dir], cache_dir=tmp_path / "c")


def test_write_keeps_unknown_keys_and_a1111_format(lib: Library, lora_dir: Path) -> None:
    side = lora_dir / "sub" / "a.json"
    side.write_text(json.dumps({"sha256": "abc", "modelId": 12, "notes": "old"}))
    lib.refresh()
    (entry,) = lib.entries
    updated = lib.write_user_metadata(
        entry, {"activation text": "cat, ねこ", "preferred weight": 0.8, "sd version": "SDXL", "favorite": True, "notes": None}
    )
    text = side.read_text(encoding="utf-8")
    assert json.loads(text) == {"sha256": "abc", "modelId": 12, "activation text": "cat, ねこ",
                                "preferred weight": 0.8, "sd version": "SDXL", "favorite": True}
    assert "ねこ" in text and '\n    "sha256"' in text  # ensure_ascii=False, indent=4 like A1111
    assert updated.family == "sdxl" and updated.favorite and updated.preferred_weight == 0.8
    assert lib.entries[0].activation_text == "cat, ねこ"
    assert not list(side.parent.glob("*.tmp"))


def test_a_json_in_another_letter_case_is_the_one_written(lora_dir: Path, tmp_path: Path) -> None:
    """`Foo.JSON` is read for `foo.safetensors` (as A1111 on Windows finds it): an edit is saved
    there, its keys kept, not into a new `foo.json` holding only the edit (on Linux the other keys
    then seemed to vanish)."""
    write_lora(lora_dir / "foo.safetensors")
    side = lora_dir / "Foo.JSON"
    side.write_text(json.dumps({"activation text": "trig", "modelId": 5}))
    lib = Library([lora_dir], cache_dir=tmp_path / "c")
    assert lib.entries[0].activation_text == "trig"
    updated = lib.write_user_metadata(lib.entries[0], {"preferred weight": 0.7})
    assert updated.user == {"activation text": "trig", "modelId": 5, "preferred weight": 0.7}
    assert sorted(p.name for p in lora_dir.iterdir()) == ["Foo.JSON", "foo.safetensors"]
    assert json.loads(side.read_text()) == updated.user
    lib.refresh()
    assert lib.entries[0].user == updated.user


@pytest.mark.parametrize(
    ("updates", "message"),
    [
        ({"preferred weight": float("nan")}, "finite"),
        ({"preferred weight": "1"}, "finite"),
        ({"activation text": 3}, "text"),
        ({"nsfw": "yes"}, "true or false"),
        ({"other": {1, 2}}, "JSON"),
    ],
)
def test_bad_values_refused_and_file_untouched(lib: Library, lora_dir: Path, updates: dict[str, object], message: str) -> None:
    side = lora_dir / "sub" / "a.json"
    side.write_text('{"notes": "keep"}')
    with pytest.raises(LoraPromptError, match=message):
        lib.write_user_metadata(lib.entries[0], updates)
    assert side.read_text() == '{"notes": "keep"}'


def test_existing_non_object_file_is_not_overwritten(lib: Library, lora_dir: Path) -> None:
    side = lora_dir / "sub" / "a.json"
    side.write_text("[1, 2")
    with pytest.raises(LoraPromptError, match="not a JSON object"):
        lib.write_user_metadata(lib.entries[0], {"notes": "x"})
    assert side.read_text() == "[1, 2"


def test_a_json_that_is_not_utf8_is_refused_not_damaged(lora_dir: Path, tmp_path: Path) -> None:
    """A .json in Latin-1 (another tool, a hand edit) reads for display with U+FFFD for its bad
    bytes; saving an edit wrote those U+FFFD back, losing the user's characters. It is refused,
    naming the file, which stays byte for byte."""
    write_lora(lora_dir / "a.safetensors")
    side = lora_dir / "a.json"
    original = b'{"notes": "caf\xe9 cr\xe8me", "modelId": 1}'
    side.write_bytes(original)
    lib = Library([lora_dir], cache_dir=tmp_path / "c")
    assert lib.entries[0].user["modelId"] == 1  # shown, leniently
    with pytest.raises(LoraPromptError, match=re.escape(f"{side}: existing user metadata is not valid UTF-8")):
        lib.write_user_metadata(lib.entries[0], {"activation text": "trig"})
    assert side.read_bytes() == original
    assert sorted(p.name for p in lora_dir.iterdir()) == ["a.json", "a.safetensors"]


def test_entry_from_another_library_refused(lib: Library, tmp_path: Path) -> None:
    other = Library([write_lora(tmp_path / "Other" / "o.safetensors").parent], cache_dir=tmp_path / "c2")
    with pytest.raises(LoraPromptError, match="not a file of this library"):
        lib.write_user_metadata(other.entries[0], {"notes": "x"})
    assert not (tmp_path / "Other" / "o.json").exists()


def test_external_edit_seen_after_refresh(lib: Library, lora_dir: Path) -> None:
    side = lora_dir / "sub" / "a.json"
    side.write_text(json.dumps({"notes": "first"}))
    lib.refresh()
    assert lib.entries[0].user["notes"] == "first"
    side.write_text(json.dumps({"notes": "second, longer"}))
    lib.refresh()
    assert lib.entries[0].user["notes"] == "second, longer"


def test_a_json_rewritten_in_place_is_seen_without_a_refresh(lora_dir: Path, tmp_path: Path) -> None:
    """A1111's metadata editor rewrites an existing `<stem>.json` in place: the folder's mtime does
    not move, so the automatic check stats those sidecars too (not other sidecars or previews)."""
    import os
    import time

    write_lora(lora_dir / "sub" / "a.safetensors")
    side = lora_dir / "sub" / "a.json"
    side.write_text(json.dumps({"activation text": "foxy", "preferred weight": 0.6}))
    (lora_dir / "sub" / "a.civitai.info").write_text(json.dumps({"trainedWords": ["x"]}))
    past = time.time_ns() - 60 * 10**9
    for path in (side, lora_dir / "sub" / "a.civitai.info", lora_dir / "sub", lora_dir):
        os.utime(path, ns=(past, past))
    lib = Library([lora_dir], cache_dir=tmp_path / "c", auto_check_s=0)
    assert lib.entries[0].activation_text == "foxy" and not lib.is_stale()
    version = lib.version
    with open(side, "w", encoding="utf8") as file:  # as A1111's write_user_metadata does
        json.dump({"activation text": "vulpine", "preferred weight": 0.3}, file, indent=4)
    os.utime(side, ns=(past + 10**9, past + 10**9))  # out of the racy window, folder untouched
    assert os.stat(lora_dir / "sub").st_mtime_ns == past
    assert lib.is_stale()
    (entry,) = lib.entries
    assert (entry.activation_text, entry.preferred_weight) == ("vulpine", 0.3) and lib.version > version
    assert not lib.is_stale()
    side.unlink()
    os.utime(lora_dir / "sub", ns=(past, past))  # even when the folder's mtime is put back
    assert lib.is_stale() and lib.entries[0].activation_text == ""


@pytest.mark.parametrize("mode", MODES)
def test_a_json_replaced_with_its_size_and_mtime_kept_is_seen(lora_dir: Path, tmp_path: Path, mode: str) -> None:
    """`rsync -a` or `cp -p` of an edited `<stem>.json` of the same length keeps its size and mtime
    (robustness rule 12): the automatic check compares the inode and ctime too. The folder's mtime
    is put back, as it is after an in-place rewrite, so only the sidecar's own stat can tell."""
    import os
    import time

    write_lora(lora_dir / "a.safetensors")
    side = lora_dir / "a.json"
    side.write_text(json.dumps({"activation text": "foxy"}))
    past = time.time_ns() - 60 * 10**9
    for path in (side, lora_dir):
        os.utime(path, ns=(past, past))
    lib = Library([lora_dir], cache_dir=tmp_path / "c", auto_check_s=0)
    assert lib.entries[0].activation_text == "foxy" and not lib.is_stale()
    replace_keeping_stat(side, json.dumps({"activation text": "wolf"}).encode(), mode)
    os.utime(lora_dir, ns=(past, past))  # a rename moved the folder's mtime: put it back
    assert lib.is_stale()
    assert lib.entries[0].activation_text == "wolf"
    assert not lib.is_stale()


def test_a_folder_that_cannot_be_written_is_a_lora_prompt_error_naming_the_file(lib: Library, lora_dir: Path) -> None:
    """Saving where the system refuses the write (here the folder was replaced by a file since the
    scan, which fails even for root) raises LoraPromptError naming `<stem>.json` and the reason."""
    (entry,) = lib.entries
    (lora_dir / "sub").rename(lora_dir / "moved")
    (lora_dir / "sub").write_text("not a folder")
    with pytest.raises(LoraPromptError, match=r"sub/a\.json: cannot write the metadata \(Not a directory\)"):
        lib.write_user_metadata(entry, {"notes": "hi"})


def test_a_read_only_folder_is_a_lora_prompt_error(lib: Library, lora_dir: Path) -> None:
    (entry,) = lib.entries
    folder = lora_dir / "sub"
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("this user writes into read-only folders (root); the test above covers the error")
        with pytest.raises(LoraPromptError, match=r"a\.json: cannot write the metadata \(Permission denied\)"):
            lib.write_user_metadata(entry, {"notes": "hi"})
    finally:
        folder.chmod(0o755)
    assert not (folder / "a.json").exists()


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_saved_files_keep_their_permissions_and_new_ones_follow_the_umask(lib: Library, lora_dir: Path) -> None:
    """Every file saved beside the models went through mkstemp's 0600 temporary file, so an edited
    `.json`, a replaced preview or a LoRA a tool wrote became unreadable to an A1111 running as
    another user (a container, a NAS share). They now keep the old file's bits, or a new file's."""
    from loraprompt.tools.io import save_tensors
    from loraprompt.ui.gallery_preview import write_preview
    from tests.ui.conftest import write_preview as draw_preview

    (entry,) = lib.entries
    old = os.umask(0o022)
    try:
        lib.write_user_metadata(entry, {"notes": "new file"})
        side = lora_dir / "sub" / "a.json"
        assert oct(side.stat().st_mode & 0o777) == "0o644"
        side.chmod(0o664)  # a group-shared models folder
        lib.write_user_metadata(entry, {"notes": "edited"})
        assert oct(side.stat().st_mode & 0o777) == "0o664"
        png = draw_preview(lora_dir / "p.png", (200, 10, 10)).read_bytes()
        assert oct(write_preview(entry.path, png).stat().st_mode & 0o777) == "0o644"
        tool_out = lora_dir / "merged.safetensors"
        save_tensors(tool_out, {"w": torch.zeros(2)}, None)
        assert oct(tool_out.stat().st_mode & 0o777) == "0o644"
        tool_out.chmod(0o640)
        save_tensors(tool_out, {"w": torch.ones(2)}, None)  # a --force over it keeps its bits
        assert oct(tool_out.stat().st_mode & 0o777) == "0o640"
    finally:
        os.umask(old)
    assert not [p.name for p in (lora_dir / "sub").iterdir() if p.name.endswith(".tmp")]
