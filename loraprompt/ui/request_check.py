"""What a generation request must hold before anything runs: batch limits, steps, size, the
img2img and hires fields; a ValueError naming the field otherwise."""

from __future__ import annotations

from typing import TYPE_CHECKING

from loraprompt.ui.img2img import resize_mode

if TYPE_CHECKING:
    from loraprompt.ui.txt2img import Txt2ImgRequest

MAX_BATCH_COUNT = 100
MAX_BATCH_SIZE = 8


def check_request(request: Txt2ImgRequest) -> None:
    """ValueError naming the field of `request` that cannot run."""
    if not 1 <= int(request.batch_count) <= MAX_BATCH_COUNT:
        raise ValueError(f"batch count must be between 1 and {MAX_BATCH_COUNT}, not {request.batch_count}")
    if not 1 <= int(request.batch_size) <= MAX_BATCH_SIZE:
        raise ValueError(f"batch size must be between 1 and {MAX_BATCH_SIZE}, not {request.batch_size}")
    if int(request.steps) < 1:
        raise ValueError(f"steps must be at least 1, not {request.steps}")
    if min(int(request.width), int(request.height)) < 8 or (int(request.width) | int(request.height)) % 8:  # the VAE's factor
        raise ValueError(f"width and height must be multiples of 8 (at least 8), not {request.width}x{request.height}")
    if request.init_image is not None:
        resize_mode(request.resize_mode)
        if not 0.0 < float(request.denoising_strength) <= 1.0:
            raise ValueError(f"denoising strength must be in (0, 1], not {request.denoising_strength:g}")
        if request.hires is not None:
            raise ValueError("hires fix is a txt2img feature: clear the init image or turn hires fix off")
    if request.hires is not None:
        request.hires.check()
