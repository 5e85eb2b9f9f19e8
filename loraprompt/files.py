"""Files written beside the user's models (LoRAs the tools make, `.json` sidecars, previews) go
through a temporary file in the same folder and an atomic rename. That temporary file is made here:
`tempfile.mkstemp` makes it 0600, so every file we saved would end up readable by its owner only,
and an Automatic1111 running as another user (a container, a NAS share, a shared models folder)
could no longer read the LoRA it was given or the metadata the gallery edited."""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path


def temp_beside(final: Path, suffix: str = ".tmp") -> tuple[int, str]:
    """An open descriptor and the name of a new file `.{final.name}.XXXXXXXX{suffix}` in `final`'s
    folder, to be renamed onto `final`: with `final`'s permission bits when it exists, else those
    of any new file (0o666 less the umask), as `open(final, "w")` would leave them."""
    try:
        mode: int | None = stat.S_IMODE(os.stat(final).st_mode)
    except OSError:  # not there yet (or unreadable: then the new file's own)
        mode = None
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOFOLLOW", 0)
    for _ in range(100):
        name = str(final.parent / f".{final.name}.{secrets.token_hex(4)}{suffix}")
        try:
            fd = os.open(name, flags, 0o666)
        except FileExistsError:
            continue
        if mode is not None and hasattr(os, "fchmod"):
            try:
                os.fchmod(fd, mode)
            except OSError:  # a file system without permissions (FAT, some shares): its own default
                pass
        return fd, name
    raise FileExistsError(f"{final.parent}: no free temporary name beside {final.name}")
