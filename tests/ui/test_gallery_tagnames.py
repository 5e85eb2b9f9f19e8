"""What a card inserts when the file's own name does not work in a tag: stems with `:`, `>`, `=` or
`#`, and folder paths (two files with one stem) when A1111's built-in Lora handles the tags."""

from __future__ import annotations

from pathlib import Path

import pytest

import loraprompt
from loraprompt.library import Library
from loraprompt.ui.gallery_service import BadRequest, GalleryService

from .conftest import SD1_KEYS, write_lora


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    lora = tmp_path / "Lora"
    write_lora(lora / "style: ink.safetensors", SD1_KEYS, {}, seed=1)  # no alias
    write_lora(lora / "a=b#c.safetensors", SD1_KEYS, {"ss_output_name": "abc_clean"}, seed=2)  # a clean alias
    write_lora(lora / "x>y.safetensors", SD1_KEYS, {"ss_output_name": "bad:alias"}, seed=3)
    write_lora(lora / "one" / "twin.safetensors", SD1_KEYS, {}, seed=4)
    write_lora(lora / "two" / "twin.safetensors", SD1_KEYS, {}, seed=5)
    write_lora(lora / "plain.safetensors", SD1_KEYS, {}, seed=6)
    write_lora(lora / "v1" / "clone.safetensors", SD1_KEYS, {"ss_output_name": "clone_v1"}, seed=7)
    write_lora(lora / "v2" / "clone.safetensors", SD1_KEYS, {"ss_output_name": "clone_v2"}, seed=8)
    return lora


def service(folder: Path, tmp_path: Path, builtin: bool) -> GalleryService:
    return GalleryService(Library(folder, tmp_path / "cache", settle_s=0.0), None, tmp_path / "thumbs", lambda: builtin)


def click(svc: GalleryService, relpath: str, prompt: str = "") -> dict[str, object]:
    card_id = next(r["id"] for r in svc.snapshot().records if r["id"].endswith("/" + relpath))
    return svc.insert({"id": card_id, "te": 0.5, "unet": 0.5, "prompt": prompt})


@pytest.mark.parametrize("relpath", ["style: ink.safetensors", "a=b#c.safetensors", "x>y.safetensors",
                                     "one/twin.safetensors", "two/twin.safetensors", "plain.safetensors"])
def test_loraprompt_resolves_every_inserted_tag_to_its_file(folder: Path, tmp_path: Path, relpath: str) -> None:
    svc = service(folder, tmp_path, builtin=False)
    result = click(svc, relpath, "a cat")
    parsed = loraprompt.parse(str(result["prompt"]))
    assert parsed.diagnostics == () and len(parsed.loras) == 1, result
    resolved = svc.library.resolve(parsed.loras[0].name, hash=parsed.loras[0].hash)
    assert resolved.entry is not None and resolved.entry.relpath == relpath
    # a folder path (two files named twin) resolves with the path fallback's warning, as before
    assert [d.code for d in resolved.diagnostics] == (["W-NAME-PATH"] if "twin" in relpath else [])
    record = next(r for r in svc.snapshot().records if r["id"].endswith("/" + relpath))
    assert bool(record["tag_note"]) == (relpath in ("style: ink.safetensors", "a=b#c.safetensors", "x>y.safetensors"))
    assert click(svc, relpath, str(result["prompt"]))["prompt"] == "a cat"  # a second click removes it


def test_cards_say_why_and_what_they_insert(folder: Path, tmp_path: Path) -> None:
    svc = service(folder, tmp_path, builtin=False)
    notes = {r["name"]: (r["tag_name"], r["tag_note"]) for r in svc.snapshot().records}
    assert notes["style: ink"] == ("style_ ink", "The name style: ink contains :, which breaks a <lora:...> tag; "
                                   "the card inserts style_ ink with the file's hash=, which finds it")
    assert notes["a=b#c"][0] == "abc_clean" and "contains = #" in notes["a=b#c"][1]
    assert notes["plain"] == ("plain", "")
    ink = next(e for e in svc.library.entries if e.name == "style: ink")
    assert click(svc, "style: ink.safetensors")["tag"] == f"<lora:style_ ink:0.5:hash={svc.library.hashes(ink)['a1111_short']}>"


def test_with_the_builtin_handling_tags_cards_insert_names_it_resolves(folder: Path, tmp_path: Path) -> None:
    svc = service(folder, tmp_path, builtin=True)
    records = {r["id"].split("/", 1)[1]: r for r in svc.snapshot().records}
    assert records["one/twin.safetensors"]["tag_name"] == "twin"  # A1111 knows stems, not folder paths
    assert "the last one it finds" in records["two/twin.safetensors"]["tag_note"]
    assert records["a=b#c.safetensors"]["tag_name"] == "abc_clean"  # A1111 registers aliases too
    # a shared stem whose files have aliases: each card inserts its alias, as A1111's own cards do
    # (it inserted "clone", which A1111 resolves to the last clone whichever card was clicked)
    for relpath, alias in (("v1/clone.safetensors", "clone_v1"), ("v2/clone.safetensors", "clone_v2")):
        assert (records[relpath]["tag_name"], records[relpath]["tag_note"]) == (alias, "")
        assert click(svc, relpath, "a cat")["prompt"] == f"a cat, <lora:{alias}:0.5>"
        found = svc.library.resolve(alias, profile="a1111").entry
        assert found is not None and found.relpath == relpath
    assert records["style: ink.safetensors"]["tag_note"].endswith("has no other name for it: rename the file")
    # the built-in knows no hash=, and <lora:style: ink:0.5> would break the prompt's LoRAs in A1111:
    # the click is refused, saying what to do, instead of inserting that tag
    with pytest.raises(BadRequest, match=r"^style: ink\.safetensors: .*rename the file"):
        click(svc, "style: ink.safetensors")


def test_a_click_on_a_by_hash_card_whose_file_cannot_be_read_says_so(folder: Path, tmp_path: Path) -> None:
    """The card of `style: ink` inserts a stand-in name with `hash=`; when the file cannot be read
    at the click (here it became a folder after the scan), the click is a 400 naming the file and
    the reason, not a server error, and the prompt is not touched."""
    svc = service(folder, tmp_path, builtin=False)
    card_id = next(r["id"] for r in svc.snapshot().records if r["id"].endswith("/style: ink.safetensors"))
    path = folder / "style: ink.safetensors"
    path.unlink()
    path.mkdir()
    with pytest.raises(BadRequest, match=r"^style: ink\.safetensors: .*rename the file"):
        svc.insert({"id": card_id, "te": 0.5, "unet": 0.5, "prompt": "a cat"})


def test_with_two_roots_every_card_inserts_a_tag_that_finds_its_own_file(tmp_path: Path) -> None:
    """models/Lora and models/LyCORIS both hold style.safetensors and sub/x.safetensors (other
    contents): where the name or path finds the other root's file (or none), the card inserts a
    stand-in with its file's hash=, which finds that very file with no warning; only the style that
    A1111's rule picks (the last found) keeps its name. A second click removes the tag."""
    lora, lyco = tmp_path / "models" / "Lora", tmp_path / "models" / "LyCORIS"
    for seed, root in enumerate((lora, lyco)):
        write_lora(root / "style.safetensors", SD1_KEYS, {}, seed=10 + seed)
        write_lora(root / "sub" / "x.safetensors", SD1_KEYS, {}, seed=20 + seed)
    svc = GalleryService(Library([lora, lyco], tmp_path / "cache", settle_s=0.0), None, tmp_path / "thumbs", lambda: False)
    records = svc.snapshot().records
    assert len(records) == 4
    by_name: dict[str, str] = {}
    for record in records:
        entry = svc.snapshot().by_id[record["id"]]
        result = svc.insert({"id": record["id"], "te": 1, "unet": 1, "prompt": "a cat"})
        parsed = loraprompt.parse(str(result["prompt"]))
        assert parsed.diagnostics == () and len(parsed.loras) == 1, result
        resolved = svc.library.resolve(parsed.loras[0].name, hash=parsed.loras[0].hash)
        assert resolved.entry is not None and resolved.entry.path == entry.path, (record["id"], result["tag"])
        by_name[record["id"]] = parsed.loras[0].name
        if parsed.loras[0].hash:
            assert resolved.diagnostics == () and "finds another one" in record["tag_note"]
        again = svc.insert({"id": record["id"], "te": 1, "unet": 1, "prompt": str(result["prompt"])})
        assert again["prompt"] == "a cat"
    assert by_name == {"0/style.safetensors": "style_by_hash", "1/style.safetensors": "style",
                       "0/sub/x.safetensors": "sub/x", "1/sub/x.safetensors": "sub/x"}


def test_a_click_never_rewrites_another_files_tag_by_its_alias(tmp_path: Path) -> None:
    """detail_v2.safetensors has the alias `detail`, which is detail.safetensors' stem: a click on
    the detail_v2 card adds its tag and leaves `<lora:detail:1>` (the other file) alone; a usable
    alias of the clicked file is still recognised as its tag."""
    lora = tmp_path / "Lora"
    write_lora(lora / "detail.safetensors", SD1_KEYS, {"ss_output_name": "detail"}, seed=1)
    write_lora(lora / "detail_v2.safetensors", SD1_KEYS, {"ss_output_name": "detail"}, seed=2)
    write_lora(lora / "ink_v3.safetensors", SD1_KEYS, {"ss_output_name": "inkstyle"}, seed=3)
    svc = service(lora, tmp_path, builtin=False)
    result = click(svc, "detail_v2.safetensors", "a cat, <lora:detail:1>")
    assert (result["prompt"], result["action"]) == ("a cat, <lora:detail:1>, <lora:detail_v2:0.5>", "added")
    assert click(svc, "detail.safetensors", "a cat, <lora:detail:1>")["action"] == "updated"
    result = click(svc, "ink_v3.safetensors", "a cat, <lora:inkstyle:1>")
    assert (result["prompt"], result["action"]) == ("a cat, <lora:ink_v3:0.5>", "updated")


def test_a_click_leaves_a_same_named_tag_with_another_files_hash_alone(tmp_path: Path) -> None:
    """Both roots' sub/x cards insert the stand-in `sub/x` with their own hash=: clicking one card
    adds its tag beside the other's (never rewrites it), and a second click removes only its own."""
    roots = [tmp_path / "A", tmp_path / "B"]
    for seed, root in enumerate(roots):
        write_lora(root / "sub" / "x.safetensors", SD1_KEYS, {}, seed=30 + seed)
    svc = GalleryService(Library(roots, tmp_path / "cache", settle_s=0.0), None, tmp_path / "thumbs", lambda: False)
    first = svc.insert({"id": "1/sub/x.safetensors", "te": 1, "unet": 1, "prompt": "a cat"})
    second = svc.insert({"id": "0/sub/x.safetensors", "te": 1, "unet": 1, "prompt": first["prompt"]})
    assert second["action"] == "added" and second["prompt"] == f"{first['prompt']}, {second['tag']}"
    assert second["tag"] != first["tag"]
    third = svc.insert({"id": "0/sub/x.safetensors", "te": 1, "unet": 1, "prompt": second["prompt"]})
    assert (third["action"], third["prompt"]) == ("removed", first["prompt"])


def test_a_click_recognises_its_by_hash_tag_by_any_hash_form_the_library_resolves(folder: Path, tmp_path: Path) -> None:
    """The `style: ink` card inserts the stand-in `style_ ink` with hash=. A tag of that name
    pasted with the file's AutoV2 (Civitai's 10 digits) or full sha256 means the same file, so a
    click updates it rather than adding a second tag; a `hash=` that is no hash (a hand-typed `a`)
    finds no file, so that tag is not this card's and is left alone."""
    svc = service(folder, tmp_path, builtin=False)
    ink = next(e for e in svc.library.entries if e.name == "style: ink")
    hashes = svc.library.hashes(ink)
    for other in (hashes["autov2"], hashes["sha256"]):
        prompt = f"a cat, <lora:style_ ink:1:hash={other}>"
        assert svc.library.resolve("style_ ink", hash=other).entry == ink
        result = click(svc, "style: ink.safetensors", prompt)
        assert (result["action"], result["prompt"]) == ("updated", f"a cat, {result['tag']}"), other
    typed = f"a cat, <lora:style_ ink:1:hash={hashes['a1111_short'][0]}>"
    assert svc.library.resolve("style_ ink", hash=hashes["a1111_short"][0]).entry != ink
    result = click(svc, "style: ink.safetensors", typed)
    assert (result["action"], result["prompt"]) == ("added", f"{typed}, {result['tag']}")


def test_with_the_builtin_a_second_click_on_a_shared_stems_card_removes_its_tag(folder: Path, tmp_path: Path) -> None:
    """With A1111's built-in handling tags, both `twin` cards insert `<lora:twin:…>` (A1111 loads
    the last twin whichever is clicked): a second click on either card removes the tag it added,
    although the name resolves to the other file for one of them."""
    svc = service(folder, tmp_path, builtin=True)
    for relpath in ("one/twin.safetensors", "two/twin.safetensors"):
        added = click(svc, relpath, "a cat")
        assert (added["action"], added["prompt"]) == ("added", "a cat, <lora:twin:0.5>"), relpath
        assert (click(svc, relpath, str(added["prompt"]))["action"], relpath) == ("removed", relpath)
