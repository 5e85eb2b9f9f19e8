"""One demo model behind the real FastAPI app on a real uvicorn server (127.0.0.1, a free port),
shared by the serve tests; the model's pristine weights are kept to check restores against."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.fixtures.ports import free_port
from tests.fixtures.threads import one_torch_thread

__all__ = ["free_port", "one_torch_thread"]

os.environ["HF_HUB_OFFLINE"] = "1"
SMALL = {"steps": 3, "width": 64, "height": 64}


class ServerThread:
    """uvicorn serving `app` on 127.0.0.1 in a thread, stopped by `stop()`."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@dataclass
class Served:
    service: Any
    engine: Any
    url: str
    port: int
    root: Path
    lora_dir: Path
    pristine: dict[str, torch.Tensor]

    def weights(self) -> dict[str, torch.Tensor]:
        pipe = self.engine.model.pipe
        return {f"{c}.{k}": v for c in ("unet", "text_encoder") for k, v in getattr(pipe, c).state_dict().items()}

    def is_pristine(self) -> bool:
        now = self.weights()
        return now.keys() == self.pristine.keys() and all(torch.equal(now[k], v) for k, v in self.pristine.items())


@pytest.fixture(scope="package")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from loraprompt.serve.app import build_app
    from loraprompt.serve.cli import ServeConfig
    from loraprompt.serve.service import Limits, Service

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("serve")
    config = ServeConfig(data_dir=str(root), outputs=str(root / "outputs"))
    engine = config.load_engine()
    service = Service(engine, download_dir=config.download_dir, limits=Limits(max_steps=60, max_size=512, max_images=8),
                      max_download_mb=1, download_timeout_s=5)
    pipe = engine.model.pipe
    pristine = {f"{c}.{k}": v.clone() for c in ("unet", "text_encoder") for k, v in getattr(pipe, c).state_dict().items()}
    server = ServerThread(build_app(service))
    try:
        yield Served(service, engine, server.url, server.port, root, Path(config.lora_dirs[0]), pristine)
    finally:
        server.stop()
        service.close()
        torch.set_num_threads(before)
