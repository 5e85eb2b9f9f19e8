"""A fresh fake A1111 per test: the stand-in `modules` package, the tiny LDM-named model, a LoRA
folder with real kohya-format files, and the extension loaded the way A1111 loads it."""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from .ldm import TinySD1

HERE = Path(__file__).parent
FAKE = HERE / "fake_webui"
BUILTIN = FAKE / "builtin_lora"
ROOT = HERE.parents[1]
ENTRY = ROOT / "scripts" / "loraprompt_script.py"
GRADIO3 = os.environ.get("LORAPROMPT_GRADIO3_PYTHON")


def on_gradio3(test: Any) -> Any:
    """Marks a test that runs a script in A1111's gradio 3.41.2, which lives in its own interpreter."""
    skip = pytest.mark.skipif(not GRADIO3, reason="LORAPROMPT_GRADIO3_PYTHON is not set (test.sh sets it to .venv-gradio3)")
    return pytest.mark.gradio3(skip(test))


PURGE = ("modules", "launch", "loraprompt_a1111", "networks", "extra_networks_lora")

# kohya key (diffusers block naming, as SD1 files spell it) -> (A1111 module name, out, in, kernel)
SD1_MODULES: dict[str, tuple[str, int, int, int]] = {
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": (
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q", 8, 8, 0),
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k": (
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k", 8, 16, 0),
    "lora_unet_down_blocks_0_attentions_0_proj_in": ("model.diffusion_model.input_blocks.1.1.proj_in", 8, 8, 1),
    "lora_unet_mid_block_attentions_0_proj_out": ("model.diffusion_model.middle_block.1.proj_out", 8, 8, 1),
    "lora_te_text_model_encoder_layers_0_self_attn_q_proj": (
        "cond_stage_model.wrapped.transformer.text_model.encoder.layers.0.self_attn.q_proj", 16, 16, 0),
    "lora_te_text_model_encoder_layers_1_mlp_fc1": (
        "cond_stage_model.wrapped.transformer.text_model.encoder.layers.1.mlp.fc1", 32, 16, 0),
}


def run_on_gradio3(script: str, lora_dir: Path, cache: Path) -> None:
    """Run tests/extension/<script> in the gradio 3.41.2 interpreter; it prints OK when every check held."""
    result = subprocess.run(
        [str(GRADIO3), str(HERE / script), str(ROOT), str(lora_dir), str(cache)],
        capture_output=True, text=True, timeout=300, check=False, env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"},
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("OK"), result.stdout[-2000:] + result.stderr[-4000:]


def lora_tensors(
    seed: int, rank: int = 2, alpha: float = 1.0, modules: dict[str, tuple[str, int, int, int]] = SD1_MODULES
) -> dict[str, torch.Tensor]:
    """A kohya LoRA over `modules`: lora_down, lora_up and alpha per module."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key, (_, n_out, n_in, kernel) in modules.items():
        conv = (1, 1) if kernel else ()
        out[f"{key}.lora_down.weight"] = torch.randn((rank, n_in, *conv), generator=gen) * 0.5
        out[f"{key}.lora_up.weight"] = torch.randn((n_out, rank, *conv), generator=gen) * 0.5
        out[f"{key}.alpha"] = torch.tensor(alpha)
    return out


def expected_delta(tensors: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    """ΔW at strength 1 computed by hand: alpha / rank * up @ down (in the module's shape)."""
    down, up = tensors[f"{key}.lora_down.weight"], tensors[f"{key}.lora_up.weight"]
    rank = down.shape[0]
    delta = up.flatten(1).double() @ down.flatten(1).double() * (float(tensors[f"{key}.alpha"]) / rank)
    return delta.reshape(up.shape[0], down.shape[1], *up.shape[2:]).float()


@dataclass
class Webui:
    """The fake A1111 process of one test."""

    root: Path
    lora_dir: Path
    sd_model: Any
    runner: Any = None
    state: Any = None
    builtin: Any = None
    files: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    @property
    def modules(self) -> Any:
        return importlib.import_module("modules")

    def write_lora(
        self, name: str, seed: int, metadata: dict[str, str] | None = None,
        modules: dict[str, tuple[str, int, int, int]] = SD1_MODULES,
    ) -> Path:
        """Write a real kohya .safetensors LoRA into the LoRA folder."""
        tensors = lora_tensors(seed, modules=modules)
        path = self.lora_dir / f"{name}.safetensors"
        save_file(tensors, str(path), metadata=metadata or {"ss_network_module": "networks.lora"})
        self.files[name] = tensors
        return path

    def enable_builtin(self) -> Any:
        """Load the stand-in of A1111's built-in Lora extension (built-ins load first)."""
        sys.path.insert(0, str(BUILTIN))
        lora_script = importlib.import_module("extra_networks_lora")
        importlib.import_module("modules.script_callbacks").on_before_ui(lora_script.before_ui)
        self.builtin = importlib.import_module("networks")
        return self.builtin

    def load_extension(self) -> Any:
        """Import scripts/loraprompt_script.py as A1111 does (by path, repo root on sys.path)."""
        scripts = importlib.import_module("modules.scripts")
        spec = importlib.util.spec_from_file_location(ENTRY.name, ENTRY)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        self.runner = scripts.ScriptRunner()
        self.runner.load_module(module)
        self.state = sys.modules["loraprompt_a1111.callbacks"].STATE
        return module

    def start(self) -> None:
        """What webui.py does after loading scripts: before_ui, then app_started."""
        callbacks = importlib.import_module("modules.script_callbacks")
        callbacks.before_ui_callback()
        self.app = FakeApp()
        callbacks.app_started_callback(None, self.app)

    def generate(self, prompt: str, **fields: Any) -> Any:
        """Run the fake processing for `prompt` on the tiny model."""
        processing = importlib.import_module("modules.processing")
        p = processing.StableDiffusionProcessing(sd_model=self.sd_model, prompt=prompt, scripts=self.runner, **fields)
        return processing.process_images(p)

    def weight(self, key: str) -> torch.Tensor:
        """The current weight of the model module a SD1_MODULES key targets."""
        return self.sd_model.get_submodule(SD1_MODULES[key][0]).weight.detach().clone()


class FakeApp:
    """Collects FastAPI-style route registrations (`@app.get(path)`)."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Any] = {}

    def get(self, path: str) -> Any:
        return lambda fn: self.routes.setdefault(("GET", path), fn)

    def post(self, path: str) -> Any:
        return lambda fn: self.routes.setdefault(("POST", path), fn)


def _purge() -> None:
    for name in list(sys.modules):
        if name.split(".")[0] in PURGE:
            del sys.modules[name]


@pytest.fixture
def webui(tmp_path: Path) -> Iterator[Webui]:
    saved_path = list(sys.path)
    _purge()
    sys.path.insert(0, str(FAKE))
    paths = importlib.import_module("modules.paths")
    paths.data_path = str(tmp_path / "data")
    paths.models_path = str(tmp_path / "models")
    lora_dir = tmp_path / "models" / "Lora"
    lora_dir.mkdir(parents=True)
    shared = importlib.import_module("modules.shared")
    shared.cmd_opts.lora_dir = str(lora_dir)
    shared.sd_model = TinySD1()
    try:
        with warnings.catch_warnings():  # the popups gradio logs outside a UI request
            warnings.filterwarnings("ignore", message="loraprompt: ", category=UserWarning)
            yield Webui(tmp_path, lora_dir, shared.sd_model)
        # A1111 only prints what a callback, a script or an extra network raised: fail on it here
        for module in ("modules.script_callbacks", "modules.scripts"):
            assert not importlib.import_module(module).errors_reported, module
        assert not importlib.import_module("modules.extra_networks").errors_shown
    finally:
        sys.path[:] = saved_path
        _purge()
