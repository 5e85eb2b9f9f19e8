"""The training loop: diffusers models, peft LoRA layers, accelerate for devices and mixed precision.

Every random draw of step k (which images, flips, noise, timesteps) comes from a generator seeded
with (seed, k), and the epoch order from (seed, epoch), so a run resumed from a saved state at step
k continues exactly as the uninterrupted run would: the state is the LoRA weights, the pivotal
vectors, the optimizer's moments and the loss history. Ctrl-C or a crash saves that state first."""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor

from loraprompt.train import export
from loraprompt.train.config import RECIPE_FIELDS, TrainConfig
from loraprompt.train.data import MAX_ZIP_BYTES, Dataset, extract_zip, load_dataset
from loraprompt.train.errors import (
    LossNotFinite,
    TrainError,
    TrainInterrupted,
    is_oom,
    oom_message,
    signals_held,
    sigterm_interrupts,
)
from loraprompt.train.loss import LossMixin, _Order, _to_tensor
from loraprompt.train.model import (
    Base,
    PivotalToken,
    add_lora,
    encode,
    load_base,
    lora_parameters,
    resolve_device,
    trained_factors,
)
from loraprompt.train.state import STATE_FILE, STATE_VERSION, default_state_dir, read_state

Event = Callable[[str, dict[str, Any]], None]


@dataclass
class TrainResult:
    output: Path
    json_path: Path
    preview_path: Path | None
    steps: int
    losses: list[float]
    skipped: list[tuple[str, str]]
    seconds: float
    samples: list[Path] = field(default_factory=list)
    preview_error: str | None = None  # why there is no preview (the LoRA was written before it)


class Trainer(LossMixin):
    """One run. `run()` trains and writes the outputs; `Trainer` can also be driven step by step."""

    def __init__(self, config: TrainConfig, *, base: Base | None = None, on_event: Event | None = None) -> None:
        self.config = config
        self.on_event = on_event or (lambda kind, data: None)
        self.output = Path(config.output)
        self._check_output()
        self.state_dir = Path(config.resume or config.state_dir or default_state_dir(self.output))
        self.resume_state = read_state(config.resume) if config.resume else None
        if self.resume_state is not None:
            saved = self.resume_state["config"]
            differ = [k for k in RECIPE_FIELDS if saved.get(k) != getattr(config, k)]
            if differ:
                raise TrainError(f"--resume {config.resume}: the saved run used other settings for "
                                 f"{', '.join(differ)}; resume with the same settings")
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        src = Path(config.images)
        if not (src.is_dir() or (src.is_file() and src.suffix.lower() == ".zip")):
            raise TrainError(f"{src}: IMAGES must be a folder of images or a .zip of them")
        self.device = resolve_device(config.device)  # before the model: loading SDXL takes minutes
        if self.device.type == "cpu" and config.mixed_precision == "fp16":  # the preview's VAE fails on it
            raise TrainError("--mixed-precision fp16 needs a GPU (--device cuda); on the CPU use bf16 or no")
        self.base = base if base is not None else load_base(config.checkpoint, config.prediction_type)
        self.resolution = config.resolution or self.base.native_resolution()
        self.dataset = self._load_images()
        saved_images = (self.resume_state or {}).get("images")  # None: a state saved before it was recorded
        if saved_images is not None and (changed := self.dataset.changes_since(saved_images)):
            raise TrainError(f"--resume {config.resume}: the images changed since the saved run ({changed}); resume"
                             " with the same images and captions, or start a new run")
        self.losses: list[float] = []
        self.step = 0
        self.samples: list[Path] = []

    # -- set-up -------------------------------------------------------------------------------
    def _check_output(self) -> None:
        out = self.output
        if not out.name or out.suffix.lower() != ".safetensors":
            raise TrainError(f"--output {out}: expected a .safetensors file name")
        if out.is_dir():  # --force would train, then fail to replace it
            raise TrainError(f"--output {out}: is a folder; name a .safetensors file")
        taken = [p for p in export.outputs(out) if p.exists()]  # the card's .json and preview too
        if taken and not self.config.force:
            raise TrainError(f"{taken[0]}: output exists; pass --force to replace it")
        if not out.parent.is_dir():
            raise TrainError(f"{out}: folder {out.parent} does not exist")
        try:  # now, not after the run: the LoRA (and the state a failure saves) go there
            fd, probe = tempfile.mkstemp(prefix=".loraprompt-probe-", dir=out.parent)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise TrainError(f"--output {out}: cannot write in {out.parent} ({exc.strerror or exc})") from exc

    def _load_images(self) -> Dataset:
        src = Path(self.config.images)
        if src.is_file() and src.suffix.lower() == ".zip":
            self._tmp = tempfile.TemporaryDirectory(prefix="loraprompt-train-")
            folder = extract_zip(src, Path(self._tmp.name), self.config.max_zip_bytes or MAX_ZIP_BYTES)
        elif src.is_dir():
            folder = src
        else:
            raise TrainError(f"{src}: IMAGES must be a folder of images or a .zip of them")
        pipe = self.base.pipe
        vae_factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        unet_factor = 2 ** (len(pipe.unet.config.block_out_channels) - 1)
        step = vae_factor * unet_factor
        if self.resolution < step:
            raise TrainError(f"--resolution {self.resolution}: this model needs at least {step} (sides are"
                             f" multiples of {step})")
        dataset = load_dataset(folder, resolution=self.resolution, step=step,
                               template=self.config.template, token=self.config.token,
                               require_token=self.config.pivotal, label=str(src))
        for name, why in dataset.skipped:
            self.on_event("skipped", {"file": name, "reason": why})
        for name, why in dataset.upscaled:
            self.on_event("warning", {"file": name, "reason": why})
        return dataset

    def _prepare(self) -> None:
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState
        from diffusers import DDPMScheduler

        config, base, pipe = self.config, self.base, self.base.pipe
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.prediction = config.prediction_type or base.prediction_type
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)  # the LoRA A matrices' initialisation
            self.pivotal = PivotalToken(base, config.token, config.word) if config.pivotal else None
            self.trained = add_lora(base, config)
        cpu = self.device.type == "cpu"
        # accelerate keeps one process-wide state and refuses a second run with another precision;
        # a run here is one process's only training, so start from a clean state each time
        AcceleratorState._reset_state(reset_partial_state=True)
        self.accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=cpu)
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(config.mixed_precision, torch.float32)
        for _, _, encoder in base.text_encoders:
            encoder.to(self.device, self.weight_dtype)
        pipe.unet.to(self.device, self.weight_dtype)
        pipe.vae.to(self.device, torch.float32)  # encoded once, in float32 (SDXL's VAE overflows in fp16)
        for module in self.trained.values():
            for p in module.parameters():
                if p.requires_grad:
                    p.data = p.data.float()
        if config.gradient_checkpointing:
            pipe.unet.enable_gradient_checkpointing()
            for name, module in self.trained.items():
                if name != "unet":
                    cast(Any, module).gradient_checkpointing_enable()
        self._cache_latents()
        self.params = {name: lora_parameters(m) for name, m in self.trained.items()}
        groups = [{"params": list(self.params["unet"].values()), "lr": config.lr}]
        groups += [{"params": list(p.values()), "lr": config.lr_te} for n, p in self.params.items() if n != "unet"]
        if self.pivotal is not None:
            for vec in self.pivotal.vectors.values():
                vec.data = vec.data.to(self.device)
            groups.append({"params": list(self.pivotal.vectors.values()), "lr": config.lr_token, "weight_decay": 0.0})
        optimizer = torch.optim.AdamW(groups, weight_decay=1e-2, fused=True if self.device.type == "cuda" else None)
        prepared = self.accelerator.prepare(*self.trained.values(), optimizer)
        self.optimizer = prepared[-1]
        self.order = _Order([img.size for img in self.dataset.images], config.batch_size, config.seed,
                            [img.repeats for img in self.dataset.images])
        if not config.train_te and self.pivotal is None:
            with torch.no_grad():
                self.fixed_text = {c: encode(base, [c], self.device) for c in {i.caption for i in self.dataset.images}}
        if self.resume_state is not None:
            self._load(self.resume_state)

    def _cache_latents(self) -> None:
        vae = self.base.pipe.vae
        scale = float(vae.config.scaling_factor)
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        self.latents: list[Tensor] = []
        self.flipped: list[Tensor] = []
        with torch.no_grad():
            for item in self.dataset.images:
                pixels = _to_tensor(item.image)[None].to(self.device)
                both = torch.cat([pixels, pixels.flip(-1)]) if self.config.do_flip else pixels
                lat = (vae.encode(both).latent_dist.mean - shift) * scale
                self.latents.append(lat[0].to(self.weight_dtype))
                self.flipped.append(lat[-1].to(self.weight_dtype))

    # -- state --------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "step": self.step,
            "losses": list(self.losses),
            "images": self.dataset.captions(),
            "config": self.config.to_dict(),
            "params": {n: {k: v.detach().cpu().clone() for k, v in p.items()} for n, p in self.params.items()},
            "vectors": {} if self.pivotal is None else {k: v.detach().cpu().clone() for k, v in self.pivotal.vectors.items()},
            "optimizer": self.optimizer.state_dict(),
        }

    def save_state(self) -> Path:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        target = self.state_dir / STATE_FILE
        fd, tmp = tempfile.mkstemp(prefix=".state.", suffix=".tmp", dir=self.state_dir)
        os.close(fd)
        try:
            torch.save(self.state(), tmp)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.on_event("state", {"step": self.step, "path": str(self.state_dir)})
        return self.state_dir

    def _load(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for name, tensors in state["params"].items():
                mine = self.params[name]
                if tensors.keys() != mine.keys():
                    raise TrainError(f"{self.config.resume}: the saved {name} LoRA has other layers than this model")
                for key, value in tensors.items():
                    mine[key].copy_(value)
            if self.pivotal is not None:
                for key, value in state["vectors"].items():
                    self.pivotal.vectors[key].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.losses = [float(x) for x in state["losses"]]

    def train_step(self) -> float:
        self.base.pipe.unet.train()
        loss = self.loss_at(self.step)
        value = float(loss.detach())
        if not math.isfinite(value):  # before the update: the saved state stays the last good step's
            raise LossNotFinite(f"the loss became {value} at step {self.step + 1}; lower --lr"
                                + (" or use --mixed-precision bf16 instead of fp16" if self.config.mixed_precision == "fp16" else "")
                                + " and train again without --resume (a resume keeps the saved run's settings)")
        self.accelerator.backward(loss)
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.accelerator.clip_grad_norm_(params, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.losses.append(value)
        return value

    # -- samples ------------------------------------------------------------------------------
    def sample(self, prompt: str | None = None) -> Any:
        """An image from the model as trained so far (the LoRA layers and token are in place)."""
        config = self.config
        text = prompt or config.sample_prompt or config.template.replace("{token}", config.token)
        unet = self.base.pipe.unet
        unet.eval()
        gen = torch.Generator(self.device).manual_seed(config.seed)
        with self.accelerator.autocast():
            image = self.base.pipe(text, num_inference_steps=config.sample_steps, height=self.resolution,
                                   width=self.resolution, generator=gen).images[0]
        return image

    def _sample_to_file(self) -> None:
        folder = self.state_dir / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"step-{self.step:06d}.png"
        export.write_png(path, self.sample())
        self.samples.append(path)
        self.on_event("sample", {"step": self.step, "path": str(path)})

    # -- the run ------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        with sigterm_interrupts():  # a container stopping, `kill`: the state is saved as for Ctrl-C
            return self._run()

    def _run(self) -> TrainResult:
        config = self.config
        started = time.time()
        try:
            self._prepare()
            start_step = self.step
            self.on_event("start", {"steps": config.steps, "step": self.step, "images": len(self.dataset.images),
                                    "resolution": self.resolution, "device": str(self.device)})
            t0 = time.perf_counter()
            while self.step < config.steps:
                loss = self.train_step()
                rate = (self.step - start_step) / max(time.perf_counter() - t0, 1e-9)
                eta = (config.steps - self.step) / rate if rate > 0 else 0.0
                self.on_event("step", {"step": self.step, "steps": config.steps, "loss": loss,
                                       "steps_per_s": rate, "eta_s": eta})
                if config.sample_every and self.step % config.sample_every == 0 and self.step < config.steps:
                    self._sample_to_file()
                if config.save_every and self.step % config.save_every == 0 and self.step < config.steps:
                    self.save_state()
            return self._write(started)
        except KeyboardInterrupt as exc:
            where = self._save_after_failure()
            then = (f"; resume with --resume {where}" if where else
                    " (before a step finished); nothing to resume" if self.step == 0 else "; the state could not be saved")
            by = f" by {exc.args[0]}" if exc.args else ""  # SIGTERM's, from sigterm_interrupts
            raise TrainInterrupted(f"interrupted{by} at step {self.step}{then}", str(where or ""), self.step) from None
        except TrainError as exc:
            where = self._save_after_failure()
            if where is None or isinstance(exc, LossNotFinite):
                raise
            raise TrainError(f"{exc}; the state at step {self.step} is in {where} (--resume {where})") from exc
        except Exception as exc:
            where = self._save_after_failure()
            hint = f"; the state at step {self.step} is in {where} (--resume {where})" if where else ""
            if is_oom(exc):
                raise TrainError(oom_message(config, self.resolution) + hint) from exc
            raise TrainInterrupted(f"training failed at step {self.step + 1}: {type(exc).__name__}: {exc}{hint}",
                                   str(where or ""), self.step) from exc
        finally:
            if self._tmp is not None:
                self._tmp.cleanup()

    def _save_after_failure(self) -> Path | None:
        if not hasattr(self, "optimizer") or self.step == 0:
            return None
        try:
            with signals_held():  # Ctrl-C pressed again while saving: the save finishes
                return self.save_state()
        except Exception:  # the original failure matters more than a failed save
            return None

    def _write_preview(self, path: Path) -> str | None:
        """Sample and write the preview; why not, if it fails. The LoRA is written first: running out
        of memory here (the optimizer's memory is still held) or Ctrl-C costs only the picture."""
        try:
            export.write_png(path, self.sample())
        except (Exception, KeyboardInterrupt) as exc:
            path.unlink(missing_ok=True)  # not an older LoRA's picture beside the new file
            why = "out of memory" if is_oom(exc) else "interrupted" if isinstance(exc, KeyboardInterrupt) else \
                f"{type(exc).__name__}: {exc}"
            return f"the preview was not made ({why}); the LoRA is saved"
        return None

    def _write(self, started: float) -> TrainResult:
        config, base = self.config, self.base
        finished = time.time()
        meta = export.metadata(config, family=base.family, base_name=base.name,
                               dataset=self.dataset, started=started, finished=finished, steps=self.step,
                               resolution=self.resolution, prediction_type=self.prediction,
                               folder_name=export.folder_name(Path(config.images)))
        factors = trained_factors(self.trained, config.network_alpha)
        bundle = None
        if self.pivotal is not None:
            bundle = export.bundle_tensors(config.token, {k: v.detach().float().cpu() for k, v in self.pivotal.vectors.items()})
        recipe = {**config.recipe(), "steps": self.step, "images": len(self.dataset.images),
                  "final_loss": self.losses[-1] if self.losses else None, "base_model": base.name}
        self._check_output()  # still free (or --force) at the end of a long run
        export.write_lora_file(self.output, factors, config.format, meta, bundle, family=base.family)
        _, json_path, preview_path = export.outputs(self.output)
        export.write_json(json_path, export.user_metadata(config, base.family, recipe))
        preview_error = self._write_preview(preview_path)
        if not config.save_every and (config.state_dir or self.state_dir == default_state_dir(self.output)):
            (self.state_dir / STATE_FILE).unlink(missing_ok=True)  # the samples the run named stay
            with contextlib.suppress(OSError):  # only when empty: never a folder holding anything else
                self.state_dir.rmdir()
        result = TrainResult(self.output, json_path, None if preview_error else preview_path, self.step,
                             list(self.losses), list(self.dataset.skipped), finished - started, list(self.samples),
                             preview_error)
        self.on_event("done", {"output": str(self.output), "steps": self.step, "seconds": result.seconds,
                               "preview_error": preview_error})
        return result


def train(config: TrainConfig, *, base: Base | None = None, on_event: Event | None = None) -> TrainResult:
    """Train a LoRA as `config` says and write it (plus `<stem>.json` and `<stem>.preview.png`).

    `base` (default: loaded from `config.checkpoint`) is trained in place: it keeps the peft layers
    (and, with `pivotal`, the new token in its tokenizers) afterwards, so pass a pipeline you own.
    SIGTERM raises KeyboardInterrupt("SIGTERM") while the model and images load, as Ctrl-C does."""
    with sigterm_interrupts():
        return Trainer(config, base=base, on_event=on_event).run()
