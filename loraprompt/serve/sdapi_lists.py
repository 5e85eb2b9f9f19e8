"""Automatic1111's routes that clients (webuiapi, SillyTavern, Open WebUI, Krita plugins) call at
start-up, answered in A1111 v1.10.1's shapes (modules/api/api.py) with what this server really has:
upscalers (the engine's image upscalers for the hires fix), latent-upscale-modes, sd-vae (none: the
model's own VAE is not a file A1111 lists), embeddings (none loaded: embeddings bundled in a LoRA
come and go with it), prompt-styles (none), scripts (none), cmd-flags (only what is true here; never
the --api-auth secret), memory; and `POST /sdapi/v1/skip`: the current image of a batch ends now,
unfinished, and the batch goes on (on Ray Serve replicas, where one image cannot be reached: the
whole request is interrupted, as `/interrupt`)."""

from __future__ import annotations

import logging
import os
from typing import Any

from loraprompt.serve.service import Service
from loraprompt.ui.dit_prompt import DIT_FAMILIES
from loraprompt.ui.hires import IMAGE_UPSCALERS, LATENT_UPSCALERS

log = logging.getLogger("loraprompt.serve")


def upscalers() -> list[dict[str, Any]]:
    """A1111's UpscalerData of its built-in PIL upscalers: no model file, and `scale` 4, A1111's default."""
    return [{"name": n, "model_name": None, "model_path": None, "model_url": None, "scale": 4} for n in IMAGE_UPSCALERS]


def latent_upscale_modes(family: str) -> list[dict[str, str]]:
    """A1111's shared.latent_upscale_modes, where the model can use them (not on SD3 or Flux)."""
    return [] if family in DIT_FAMILIES else [{"name": n} for n in LATENT_UPSCALERS]


def cmd_flags(service: Service) -> dict[str, Any]:
    """A1111's cmd_opts, the ones that mean something here: `api`, `lora_dir` (the first LoRA folder)
    and what `loraprompt serve` was started with (`Service.cmd_flags`)."""
    roots = getattr(service.library.base, "roots", [])
    flags: dict[str, Any] = {"api": True, "lora_dir": str(roots[0]) if roots else None}
    flags.update(service.cmd_flags)
    flags.pop("api_auth", None)  # A1111 answers it; a password is no client's business
    return flags


def ram() -> dict[str, Any]:
    """A1111's `ram`: this process's resident memory as `used`, the machine's as `total`, `free` the rest."""
    try:
        try:
            import psutil
        except ImportError:
            psutil = None
        if psutil is not None:
            used, total = psutil.Process(os.getpid()).memory_info().rss, psutil.virtual_memory().total
        else:
            used = _proc_kib("/proc/self/status", "VmRSS") * 1024
            total = _proc_kib("/proc/meminfo", "MemTotal") * 1024
        return {"free": total - used, "used": used, "total": total}
    except Exception as exc:  # as A1111: the reason instead of the numbers
        return {"error": f"{exc}"}


def _proc_kib(path: str, key: str) -> int:
    with open(path) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise OSError(f"no {key} in {path}")


def cuda() -> dict[str, Any]:
    """A1111's `cuda`: torch's numbers for the current device, or {"error": "unavailable"}."""
    try:
        import torch

        if not torch.cuda.is_available():
            return {"error": "unavailable"}
        free, total = torch.cuda.mem_get_info()
        s = dict(torch.cuda.memory_stats())

        def pair(name: str) -> dict[str, int]:
            return {"current": s[f"{name}.all.current"], "peak": s[f"{name}.all.peak"]}

        return {"system": {"free": free, "used": total - free, "total": total}, "active": pair("active_bytes"),
                "allocated": pair("allocated_bytes"), "reserved": pair("reserved_bytes"),
                "inactive": pair("inactive_split_bytes"),
                "events": {"retries": s["num_alloc_retries"], "oom": s["num_ooms"]}}
    except Exception as exc:
        return {"error": f"{exc}"}


def add_routes(router: Any, service: Service) -> None:
    """Register the routes (plain functions: FastAPI runs them in its threadpool)."""
    router.get("/sdapi/v1/upscalers")(upscalers)
    router.get("/sdapi/v1/sd-vae")(lambda: [])
    router.get("/sdapi/v1/prompt-styles")(lambda: [])
    router.get("/sdapi/v1/embeddings")(lambda: {"loaded": {}, "skipped": {}})
    router.get("/sdapi/v1/scripts")(lambda: {"txt2img": [], "img2img": []})
    router.get("/sdapi/v1/memory")(lambda: {"ram": ram(), "cuda": cuda()})
    router.get("/sdapi/v1/cmd-flags")(lambda: cmd_flags(service))
    router.get("/sdapi/v1/latent-upscale-modes")(lambda: latent_upscale_modes(service.model.family))

    @router.post("/sdapi/v1/skip")
    def skip() -> None:
        backend: Any = service.backend
        if hasattr(backend, "skip"):
            backend.skip()
        else:
            log.info("skip: the replicas cannot end one image of a batch; the request is interrupted")
            backend.interrupt()
