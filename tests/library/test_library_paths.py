"""The web-route path policy: traversal attempts refused, only real images under the roots served."""

from __future__ import annotations

from pathlib import Path

import pytest

from loraprompt.library import Library, paths
from loraprompt.library.paths import check_ref, content_type

from .conftest import write_lora

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16
JPEG = b"\xff\xd8\xff\xe0" + b"\0" * 16


@pytest.fixture
def lib(tmp_path: Path) -> Library:
    root = tmp_path / "Lora"
    write_lora(root / "sub" / "a.safetensors")
    (root / "sub" / "a.png").write_bytes(PNG)
    (root / "b.jpg").write_bytes(JPEG)
    (root / "fake.png").write_text("<html><script>alert(1)</script></html>")
    (root / "page.html").write_text("<html></html>")
    (root / "icon.svg").write_text("<svg onload=alert(1)></svg>")
    (root / "a.json").write_text("{}")
    evil = tmp_path / "LoraEvil"
    evil.mkdir()
    (evil / "x.png").write_bytes(PNG)
    (tmp_path / "secret.png").write_bytes(PNG)
    (root / "link_out.png").symlink_to(tmp_path / "secret.png")
    (root / "link_evil").symlink_to(evil)
    (root / "link_model.png").symlink_to(root / "sub" / "a.safetensors")
    return Library([root], cache_dir=tmp_path / "c")


@pytest.mark.parametrize(
    "ref",
    [
        "../secret.png",
        "sub/../../secret.png",
        "../LoraEvil/x.png",
        "%2e%2e/secret.png",
        "%2E%2E%2Fsecret.png",
        "sub%2fa.png",
        "..\\secret.png",
        "sub\\a.png",
        "sub/a.png\x00.txt",
        "/etc/passwd",
        "C:/Windows/win.ini",
        "",
        "sub//a.png",
        "./sub/a.png",
        "sub/a.safetensors",
        "a.json",
        "page.html",
        "icon.svg",
        "fake.png",
        "link_out.png",
        "link_evil/x.png",
        "link_model.png",
        "missing.png",
        "sub",
        None,
        42,
    ],
)
def test_refused(lib: Library, ref: object) -> None:
    assert lib.safe_file(ref) is None


@pytest.mark.parametrize("ref", ["sub/a.png", "b.jpg", Path("sub/a.png")])
def test_served(lib: Library, ref: object, tmp_path: Path) -> None:
    got = lib.safe_file(ref)
    assert got is not None and got.is_relative_to((tmp_path / "Lora").resolve())


def test_absolute_path_of_a_real_preview_is_refused(lib: Library, tmp_path: Path) -> None:
    assert lib.safe_file(str(tmp_path / "Lora" / "sub" / "a.png")) is None


def test_file_ref_round_trip(lib: Library) -> None:
    (entry,) = lib.entries
    ref = lib.file_ref(entry.previews[0])
    assert ref == "sub/a.png" and lib.safe_file(ref) == Path(entry.previews[0]).resolve()


def test_previews_in_a_followed_symlinked_folder_are_served(tmp_path: Path) -> None:
    outside = tmp_path / "other_drive"
    write_lora(outside / "far.safetensors")
    (outside / "far.png").write_bytes(PNG)
    (outside / "notes.png").write_bytes(PNG)
    root = tmp_path / "Lora"
    root.mkdir()
    (root / "linked").symlink_to(outside)
    lib = Library([root], cache_dir=tmp_path / "c")
    assert lib.safe_file("linked/far.png") == (outside / "far.png").resolve()
    assert lib.safe_file("linked/notes.png") is None  # not a listed preview, outside the root


def test_unknown_kind_is_a_programming_error(lib: Library) -> None:
    with pytest.raises(ValueError, match="only 'preview'"):
        lib.safe_file("sub/a.png", kind="model")


def test_check_ref_normalises_nothing() -> None:
    assert check_ref("sub/a.png") == "sub/a.png"
    assert check_ref("sub/./a.png") is None


def test_preview_swapped_for_a_symlink_after_the_scan_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "Lora"
    write_lora(root / "a.safetensors")
    (root / "a.png").write_bytes(PNG)
    outside = tmp_path / "other_drive"
    write_lora(outside / "far.safetensors")
    (outside / "far.png").write_bytes(PNG)
    (root / "linked").symlink_to(outside)
    (tmp_path / "secret.png").write_bytes(PNG)
    lib = Library([root], cache_dir=tmp_path / "c", auto_check_s=3600)
    for swapped in (root / "a.png", outside / "far.png"):
        swapped.unlink()
        swapped.symlink_to(tmp_path / "secret.png")
    assert lib.safe_file("a.png") is None
    assert lib.safe_file("linked/far.png") is None


def test_an_image_whose_bytes_are_another_format_is_served_as_what_it_is(tmp_path: Path) -> None:
    """Civitai Helper saves Civitai's JPEG as `<stem>.preview.png` (A1111 shows it): any image
    signature behind an image extension is served, typed by its bytes; other bytes stay refused."""
    root = tmp_path / "Lora"
    write_lora(root / "cute.safetensors")
    (root / "cute.preview.png").write_bytes(JPEG)
    (root / "anim.webp").write_bytes(b"GIF89a" + b"\0" * 16)
    (root / "page.svg").write_bytes(PNG)  # an image's bytes do not make .svg an image extension
    (root / "fake.jpg").write_bytes(b"<html>" + b"\0" * 16)
    lib = Library([root], cache_dir=tmp_path / "c")
    assert lib.safe_file("cute.preview.png") == (root / "cute.preview.png").resolve()
    assert content_type(root / "cute.preview.png") == "image/jpeg"
    assert content_type(root / "anim.webp") == "image/gif"
    assert lib.safe_file("page.svg") is None and content_type(root / "page.svg") is None
    assert lib.safe_file("fake.jpg") is None and content_type(root / "fake.jpg") is None


def test_percent_in_a_file_name_is_an_ordinary_character(tmp_path: Path) -> None:
    """`wget .../add%20detail.safetensors` keeps the escape in the saved name: its preview is
    served. References are never URL-decoded, so `%2e%2e` is a folder of that name, not `..`."""
    root = tmp_path / "Lora"
    write_lora(root / "add%20detail.safetensors")
    (root / "add%20detail.png").write_bytes(PNG)
    (tmp_path / "secret.png").write_bytes(PNG)
    lib = Library([root], cache_dir=tmp_path / "c")
    (entry,) = lib.entries
    assert lib.safe_file(lib.file_ref(entry.previews[0])) == (root / "add%20detail.png").resolve()
    for ref in ("%2e%2e/secret.png", "%2E%2E%2Fsecret.png", "add detail.png"):
        assert lib.safe_file(ref) is None
    (root / "%2e%2e").mkdir()
    (root / "%2e%2e" / "inside.png").write_bytes(PNG)
    assert lib.safe_file("%2e%2e/inside.png") == (root / "%2e%2e" / "inside.png").resolve()


def test_a_served_preview_is_read_once_for_its_check_and_its_type(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The preview route needs the file checked (an image behind an image extension) and its type
    (what its bytes say): `safe_image` gives both from one read of the first bytes, where the route
    read them twice (`safe_file`, then `content_type`)."""
    root = tmp_path / "Lora"
    write_lora(root / "cute.safetensors")
    (root / "cute.preview.png").write_bytes(JPEG)
    lib = Library([root], cache_dir=tmp_path / "c")
    reads: list[bytes] = []
    real = paths.image_kind
    monkeypatch.setattr(paths, "image_kind", lambda data: reads.append(data) or real(data))
    assert lib.safe_image("cute.preview.png") == ((root / "cute.preview.png").resolve(), "image/jpeg")
    assert len(reads) == 1
    assert lib.safe_image("missing.png") is None and lib.safe_file("cute.preview.png") is not None
