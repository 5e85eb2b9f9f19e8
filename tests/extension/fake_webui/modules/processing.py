"""Stand-in for modules/processing.py (signatures from A1111 v1.10.1; see modules/__init__.py).

`process_images` runs the extra-network part of A1111's process_images_inner in its order: scripts'
process, per batch the prompt parse (first prompt decides) and activate, one cfg_denoiser callback
per sampling step, the hires pass (its own prompts, activate again, its own steps), deactivate."""

from dataclasses import dataclass, field
from typing import Any, ClassVar

from modules import extra_networks, script_callbacks, shared


@dataclass(repr=False)
class StableDiffusionProcessing:
    # A1111's cond caches: [cached_params, conds], shared by every instance (the real __init__ copies
    # these references; get_conds_with_caching fills them in place). No conditioning is computed here.
    cached_uc: ClassVar[list] = [None, None]
    cached_c: ClassVar[list] = [None, None]

    sd_model: object = None
    prompt: str = ""
    hr_prompt: str = ""
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 4
    enable_hr: bool = False
    hr_second_pass_steps: int = 0
    all_prompts: list = None
    all_hr_prompts: list = None
    extra_generation_params: dict = None
    comments: dict = None
    scripts: Any = None
    disable_extra_networks: bool = False
    is_hr_pass: bool = field(default=False, init=False)
    iteration: int = field(default=0, init=False)

    # processing.py:261-267: the field above is shadowed by this property: p.sd_model is always the
    # loaded model (shared.sd_model), and `sd_model=` given to the constructor is ignored
    @property
    def sd_model(self):  # noqa: F811  (A1111 shadows its own field so)
        return shared.sd_model

    @sd_model.setter
    def sd_model(self, value):
        pass

    def __post_init__(self):
        self.extra_generation_params = self.extra_generation_params or {}
        self.comments = {}

    def comment(self, text):
        self.comments[text] = 1


@dataclass(repr=False)
class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    cached_hr_uc: ClassVar[list] = [None, None]
    cached_hr_c: ClassVar[list] = [None, None]


@dataclass
class Processed:
    p: StableDiffusionProcessing
    comments: str = ""
    extra_generation_params: dict = field(default_factory=dict)


def _sample(p, steps):
    for step in range(steps):
        script_callbacks.cfg_denoiser_callback(
            script_callbacks.CFGDenoiserParams(None, None, None, step, steps, None, None)
        )


def process_images(p: StableDiffusionProcessing) -> Processed:
    size = p.batch_size
    p.all_prompts = p.all_prompts or [p.prompt] * (p.n_iter * size)
    p.all_hr_prompts = p.all_hr_prompts or [p.hr_prompt or x for x in p.all_prompts]
    if p.scripts is not None:
        p.scripts.process(p)
    for n in range(p.n_iter):
        p.iteration = n
        p.prompts, p.extra_network_data = extra_networks.parse_prompts(p.all_prompts[n * size:(n + 1) * size])
        p.seeds = p.subseeds = list(range(n * size, (n + 1) * size))
        if not p.disable_extra_networks:
            extra_networks.activate(p, p.extra_network_data)
        _sample(p, p.steps)
        if p.enable_hr:
            p.hr_prompts, p.hr_extra_network_data = extra_networks.parse_prompts(p.all_hr_prompts[n * size:(n + 1) * size])
            p.is_hr_pass = True
            if not p.disable_extra_networks:
                extra_networks.activate(p, p.hr_extra_network_data)
            _sample(p, p.hr_second_pass_steps or p.steps)
            p.is_hr_pass = False
    if not p.disable_extra_networks and p.extra_network_data:
        extra_networks.deactivate(p, p.extra_network_data)
    return Processed(p, "".join(f"{c}\n" for c in p.comments), dict(p.extra_generation_params))
