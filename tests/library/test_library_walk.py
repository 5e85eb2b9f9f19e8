"""The walk of the LoRA folders as A1111 sees them: sidecars in any case, its walk order,
roots given twice, unplugged links and files that are not regular files."""

from __future__ import annotations

import json
from pathlib import Path

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
