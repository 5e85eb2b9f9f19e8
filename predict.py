"""Cog predictor: the inputs of `loraprompt serve`'s /predictions (Replicate's LoRA model and its
Flux fine-tunes) on one model, so it can be pushed to Replicate (`cog push`).

The model is `$LORAPROMPT_CHECKPOINT` (a single file or diffusers folder baked into the image or
mounted), the LoRAs are under `$LORAPROMPT_LORA_DIR` (`:`-separated); without them the built-in
demo model and its LoRAs are served. LoRAs may also be `http(s)://` URLs (downloaded once)."""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path as LocalPath
from typing import Any

from cog import BasePredictor, Input, Path

SCHEDULERS = ["K_EULER_ANCESTRAL", "K_EULER", "DPMSolverMultistep", "KarrasDPM", "DDIM", "HeunDiscrete", "UniPCMultistep"]
ASPECT_RATIOS = ["custom", "1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3", "9:16", "9:21"]


class Predictor(BasePredictor):
    def setup(self) -> None:
        """Load the model and the LoRA library once."""
        from loraprompt.serve.cli import ServeConfig
        from loraprompt.serve.service import Limits, Service

        data_dir = os.environ.get("LORAPROMPT_HOME") or os.path.join(tempfile.gettempdir(), "loraprompt")
        lora_dirs = [d for d in os.environ.get("LORAPROMPT_LORA_DIR", "").split(os.pathsep) if d]
        config = ServeConfig(os.environ.get("LORAPROMPT_CHECKPOINT") or None, None, lora_dirs, data_dir,
                             os.path.join(data_dir, "outputs"))
        self.service = Service(config.load_engine(), download_dir=config.download_dir,
                               limits=Limits(max_steps=150, max_size=2048, max_images=4))

    def predict(  # noqa: PLR0917  (Cog reads each input from a parameter)
        self,
        prompt: str = Input(description="Prompt; <1>, <2>… stand for the LoRAs' trigger words; <lora:name:w> tags work too"),
        negative_prompt: str = Input(description="What not to draw", default=""),
        lora_urls: str = Input(description="LoRAs separated by |: names or paths in the LoRA folders, or http(s) URLs",
                               default=""),
        lora_scales: str = Input(description="Scales of lora_urls separated by | (one value: all)", default="0.5"),
        lora_weights: str = Input(description="One more LoRA (Flux fine-tune style): name, owner/name or URL", default=""),
        lora_scale: float = Input(description="Scale of lora_weights", default=1.0, ge=-1, le=3),
        extra_lora: str = Input(description="Another LoRA: name, owner/name or URL", default=""),
        extra_lora_scale: float = Input(description="Scale of extra_lora", default=1.0, ge=-1, le=2),
        aspect_ratio: str = Input(description="Image shape; custom uses width and height", choices=ASPECT_RATIOS,
                                  default="custom"),
        width: int = Input(description="Width (0: the model's native size)", default=0, ge=0, le=2048),
        height: int = Input(description="Height (0: the model's native size)", default=0, ge=0, le=2048),
        num_outputs: int = Input(description="Number of images", default=1, ge=1, le=4),
        num_inference_steps: int = Input(description="Sampling steps", default=30, ge=1, le=150),
        guidance_scale: float = Input(description="Classifier-free guidance scale", default=7.5, ge=0, le=30),
        scheduler: str = Input(description="Sampler", choices=SCHEDULERS, default="K_EULER_ANCESTRAL"),
        seed: int = Input(description="Seed (-1: random); image i gets seed + i", default=-1),
        output_format: str = Input(description="Image format", choices=["png", "jpg", "webp"], default="png"),
        output_quality: int = Input(description="Quality of jpg and webp", default=80, ge=0, le=100),
    ) -> list[Path]:
        from loraprompt.serve.errors import ServeError
        from loraprompt.serve.loras import DownloadFailed
        from loraprompt.serve.predictions import Prediction, PredictionInput, finish, prepare

        values: dict[str, Any] = {
            "prompt": prompt, "negative_prompt": negative_prompt, "lora_urls": lora_urls, "lora_scales": lora_scales,
            "lora_weights": lora_weights or None, "lora_scale": lora_scale, "extra_lora": extra_lora or None,
            "extra_lora_scale": extra_lora_scale, "aspect_ratio": aspect_ratio, "width": width or None,
            "height": height or None, "num_outputs": num_outputs, "num_inference_steps": num_inference_steps,
            "guidance_scale": guidance_scale, "scheduler": scheduler, "seed": None if seed < 0 else seed,
            "output_format": output_format, "output_quality": output_quality,
        }
        inp = PredictionInput(**values)
        pred = Prediction(uuid.uuid4().hex, values, output_format, output_quality)
        try:
            tasks = prepare(self.service, pred, inp)
        except ServeError as exc:
            raise ValueError(str(exc)) from None
        except DownloadFailed as exc:
            raise RuntimeError(str(exc)) from None
        job = self.service.run(tasks)
        try:
            job.wait()
        except BaseException:  # cancelled by cog: stop the job; the model is restored
            self.service.backend.cancel(job)
            job.wait(60)
            raise
        finish(pred, job)
        print("\n".join(pred.logs + job.logs))
        if pred.status != "succeeded":
            raise RuntimeError(pred.error or pred.status)
        out_dir = LocalPath(tempfile.mkdtemp(prefix="loraprompt-"))
        paths = []
        for i, image in enumerate(job.images):
            path = out_dir / f"out-{i}.{output_format}"
            if output_format == "png":
                path.write_bytes(image.png)  # keeps the A1111 infotext chunk
            else:
                import base64

                path.write_bytes(base64.b64decode((pred.output or [])[i].split(",", 1)[1]))
            paths.append(Path(path))
        return paths
