"""A1111-style conditioning for the web UI: plain prompts give exactly diffusers' embeddings;
emphasis, BREAK and prompts past 75 tokens change them the way Automatic1111 does."""

from __future__ import annotations

import copy
import os
from typing import Any

import pytest
import torch

from loraprompt.models import LoadedModel
from loraprompt.models.checkpoint import write_config_dir
from loraprompt.models.clip_skip import clip_skip_limit
from loraprompt.models.demo import build_demo_pipeline
from loraprompt.ui.txt2img_prompt import CHUNK, Conditioning, weighted_chunks
from tests.models.ldm_layout import components_from_configs, tiny_sdxl_configs

os.environ["HF_HUB_OFFLINE"] = "1"


def prompt_embeddings(pipe: Any, prompt: str, negative: str) -> dict[str, Any]:
    return Conditioning(pipe, prompt, negative, steps=1).kwargs


@pytest.fixture(scope="module")
def sd1() -> Any:
    return build_demo_pipeline()


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTokenizer

    configs = tiny_sdxl_configs()
    parts = components_from_configs(configs)
    folder = write_config_dir(configs, tmp_path_factory.mktemp("xl"))
    return StableDiffusionXLPipeline(
        vae=parts.vae, text_encoder=parts.text_encoder, text_encoder_2=parts.text_encoder_2,
        tokenizer=CLIPTokenizer.from_pretrained(str(folder / "tokenizer")),
        tokenizer_2=CLIPTokenizer.from_pretrained(str(folder / "tokenizer_2")),
        unet=parts.unet, scheduler=EulerDiscreteScheduler.from_config(configs["scheduler"]),
    )


def test_plain_prompt_equals_diffusers_sd1(sd1: Any) -> None:
    kw = prompt_embeddings(sd1, "a cat on a mat", "blurry")
    ours = sd1.encode_prompt("a cat on a mat", "cpu", 1, True, "blurry")
    assert torch.equal(kw["prompt_embeds"], ours[0]) and torch.equal(kw["negative_prompt_embeds"], ours[1])
    empty = sd1.encode_prompt("x", "cpu", 1, True, None)[1]
    assert torch.equal(prompt_embeddings(sd1, "x", "")["negative_prompt_embeds"], empty)


def test_clip_skip_is_the_output_of_a_shorter_encoder(sd1: Any) -> None:
    # A1111's "Clip skip: 2" = the text encoder without its last layer (the final norm still applied).
    kw = Conditioning(sd1, "a cat", "ugly", steps=1, clip_skip=2).kwargs
    shorter = copy.deepcopy(sd1.text_encoder)
    tower = getattr(shorter, "text_model", shorter)
    tower.encoder.layers = tower.encoder.layers[:-1]
    original = sd1.text_encoder
    sd1.text_encoder = shorter
    try:
        ref = sd1.encode_prompt("a cat", "cpu", 1, True, "ugly")
    finally:
        sd1.text_encoder = original
    assert torch.equal(kw["prompt_embeds"], ref[0]) and torch.equal(kw["negative_prompt_embeds"], ref[1])
    assert not torch.equal(kw["prompt_embeds"], prompt_embeddings(sd1, "a cat", "ugly")["prompt_embeds"])


def test_the_engine_runs_exactly_the_clip_skips_the_page_and_apis_offer(sd1: Any) -> None:
    # one limit for the slider, the APIs' 422 and the engine: the encoder's depth, at most A1111's 12
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextModel

    config = sd1.text_encoder.config.to_dict() | {"num_hidden_layers": 14}
    deep = StableDiffusionPipeline(**{**sd1.components, "text_encoder": CLIPTextModel(type(sd1.text_encoder.config)(**config)).eval()})
    for pipe, top in ((sd1, 2), (deep, 12)):
        assert clip_skip_limit(LoadedModel(pipe=pipe, family="sd1", name="m")) == top
        for n in range(1, top + 1):
            Conditioning(pipe, "a cat", "", steps=1, clip_skip=n)
        reason = "the 2 layers of text_encoder allow" if top == 2 else "A1111's setting goes"
        with pytest.raises(ValueError, match=f"clip skip {top + 1} is deeper than {reason}: set 1 to {top}$"):
            Conditioning(pipe, "a cat", "", steps=1, clip_skip=top + 1)
    assert clip_skip_limit(LoadedModel(pipe=deep, family="flux", name="m")) == 1


def test_plain_prompt_equals_diffusers_sdxl(sdxl: Any) -> None:
    for negative in ("ugly", ""):
        kw = prompt_embeddings(sdxl, "a photo of a cat", negative)
        ref = sdxl.encode_prompt("a photo of a cat", device="cpu", negative_prompt=negative or None)
        names = ["prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"]
        for name, want in zip(names, ref):
            assert torch.equal(kw[name], want), (negative, name)


def test_emphasis_weights_tokens_like_a1111(sd1: Any) -> None:
    assert weighted_chunks(sd1.tokenizer, "(cat:1)") == weighted_chunks(sd1.tokenizer, "cat")
    chunk = weighted_chunks(sd1.tokenizer, "a (cat:1.5) [dog]")[0]
    assert {w for _, w in chunk} == {1.0, 1.5, 1 / 1.1}
    plain = prompt_embeddings(sd1, "a cat dog", "")["prompt_embeds"]
    strong = prompt_embeddings(sd1, "a (cat:1.5) dog", "")["prompt_embeds"]
    assert plain.shape == strong.shape and not torch.equal(plain, strong)
    assert torch.allclose(plain.mean(), strong.mean(), atol=1e-6)  # A1111 keeps the mean


def test_a_chunk_that_fills_up_just_after_a_comma_ends_at_the_comma(sd1: Any) -> None:
    """A1111's word wrap (comma_padding_backtrack, default 20): the demo tokenizer gives one token a
    character, so 69 b's, a comma and 10 c's fill the first chunk 6 tokens after the comma."""
    tok = sd1.tokenizer
    comma = tok.convert_tokens_to_ids(",</w>")
    text = "b" * 69 + ", " + "(" + "c" * 10 + ":1.3)"
    chunks = weighted_chunks(tok, text)
    assert [len(c) for c in chunks] == [70, 10]
    assert chunks[0][-1] == (comma, 1.0) and {w for _, w in chunks[1]} == {1.3}  # weights move with them
    assert [len(c) for c in weighted_chunks(tok, text, backtrack=0)] == [75, 5]  # the setting at 0: cut at 75
    assert [len(c) for c in weighted_chunks(tok, text, backtrack=5)] == [75, 5]  # the comma is 6 back
    far = "b" * 50 + ", " + "c" * 30  # the comma 25 tokens back: no wrap
    assert [len(c) for c in weighted_chunks(tok, far)] == [75, 6]
    at_end = "b" * 74 + ", " + "c" * 3  # the chunk ends with the comma: nothing moves
    assert [len(c) for c in weighted_chunks(tok, at_end)] == [75, 3]
    broken = "b" * 69 + ", c BREAK " + "d" * 80  # BREAK forgets the comma: the next chunk cuts at 75
    assert [len(c) for c in weighted_chunks(tok, broken)] == [71, 75, 5]
    kw = prompt_embeddings(sd1, text, "")
    assert kw["prompt_embeds"].shape[1] == 154


def test_long_prompts_and_break_make_chunks(sd1: Any, sdxl: Any) -> None:
    long = " ".join(f"w{i}" for i in range(60))  # byte-level demo tokenizer: > 75 tokens
    chunks = weighted_chunks(sd1.tokenizer, long)
    assert len(chunks) > 1 and all(len(c) == CHUNK for c in chunks[:-1])
    kw = prompt_embeddings(sd1, long, "short")
    assert kw["prompt_embeds"].shape[1] == 77 * len(chunks) == kw["negative_prompt_embeds"].shape[1]
    tail = prompt_embeddings(sd1, long + " extra", "short")["prompt_embeds"]
    assert not torch.equal(kw["prompt_embeds"], tail)  # words past token 75 still count
    assert len(weighted_chunks(sdxl.tokenizer, "a cat BREAK a dog")) == 2
    xl = prompt_embeddings(sdxl, "a cat BREAK a dog", "")
    assert xl["prompt_embeds"].shape[1] == 154 and xl["pooled_prompt_embeds"].shape == (1, 48)


def test_sdxl_pipeline_runs_with_edited_prompt(sdxl: Any) -> None:
    cond = Conditioning(sdxl, "a [(red:1.3):blue:1] house BREAK at night", "blurry", steps=2)
    switched: list[set[str]] = []

    def step_end(pipe: Any, step: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        update = cond.step_update(step, pipe.do_classifier_free_guidance)
        switched.append(set(update))
        kwargs.update(update)
        return kwargs

    image = sdxl(**cond.kwargs, num_inference_steps=2, width=64, height=64, output_type="np",
                 callback_on_step_end=step_end, callback_on_step_end_tensor_inputs=cond.tensor_names).images[0]
    assert image.shape == (64, 64, 3)
    assert switched[0] == {"prompt_embeds", "add_text_embeds"}  # pooled embeddings switch too


def test_bad_emphasis_weight_is_a_prompt_error(sd1: Any) -> None:
    from loraprompt.errors import PromptSyntaxError

    with pytest.raises(PromptSyntaxError):
        prompt_embeddings(sd1, "(cat:1.2.3)", "")



def test_prompt_editing_switches_conditioning_between_steps(sd1: Any) -> None:
    cond = Conditioning(sd1, "a [cat:dog:0.5] [in rain|in snow]", "", steps=4)
    assert [cond.texts(s)[0] for s in (1, 2, 3, 4)] == ["a cat in rain", "a cat in snow", "a dog in rain", "a dog in snow"]
    update = cond.step_update(1, guided=True)  # after step 2, for step 3
    neg, pos = cond.embeds[""][0], cond.embeds["a dog in rain"][0]
    assert torch.equal(update["prompt_embeds"], torch.cat([neg, pos]))
    assert torch.equal(cond.step_update(1, guided=False)["prompt_embeds"], pos)
    steady = Conditioning(sd1, "a [cat:cat:0.5]", "", steps=4)
    assert all(steady.step_update(i, True) == {} for i in range(4))


def test_prompt_editing_reaches_the_image(sd1: Any) -> None:
    def draw(prompt: str) -> Any:
        cond = Conditioning(sd1, prompt, "", steps=4)

        def step_end(pipe: Any, step: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            kwargs.update(cond.step_update(step, pipe.do_classifier_free_guidance))
            return kwargs

        return sd1(**cond.kwargs, num_inference_steps=4, width=64, height=64, output_type="np",
                   generator=torch.Generator().manual_seed(1), callback_on_step_end=step_end,
                   callback_on_step_end_tensor_inputs=cond.tensor_names).images[0]

    edited, red, blue = draw("a [red:blue:0.5] house"), draw("a red house"), draw("a blue house")
    assert not (edited == red).all() and not (edited == blue).all()
    assert (draw("a [red:red:0.5] house") == red).all()


def test_sdxl_clip_skip_reads_clip_l_at_an_earlier_layer(sdxl: Any) -> None:
    # A1111 with "sdxl_clip_l_skip": CLIP-L at hidden_states[-clip_skip] (no final norm), OpenCLIP-G
    # always at its penultimate layer; clip skip 1 and 2 are SDXL's own penultimate layer. CLIP-L
    # has 3 layers here: a clip skip goes as deep as the layers, never to the bare embeddings
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextModel

    config = sdxl.text_encoder.config.to_dict() | {"num_hidden_layers": 3}
    deeper = CLIPTextModel(type(sdxl.text_encoder.config)(**config)).eval()
    sdxl = StableDiffusionXLPipeline(**{**sdxl.components, "text_encoder": deeper})
    with pytest.raises(ValueError, match="clip skip 4 is deeper than the 3 layers of text_encoder allow: set 1 to 3"):
        Conditioning(sdxl, "a cat", "", steps=1, clip_skip=4)
    width = sdxl.text_encoder.config.hidden_size
    one, two, three = (Conditioning(sdxl, "a cat", "", steps=1, clip_skip=n).kwargs["prompt_embeds"] for n in (1, 2, 3))
    assert torch.equal(one, two)
    assert not torch.equal(one[..., :width], three[..., :width])
    assert torch.equal(one[..., width:], three[..., width:])
    ids = sdxl.tokenizer("a cat", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = sdxl.text_encoder(ids, output_hidden_states=True).hidden_states[-3]
    assert torch.allclose(three[..., :width], hidden, atol=1e-5)


def test_and_on_sdxl_sums_parts_with_pooled_and_time_embeddings(sdxl: Any) -> None:
    from loraprompt.ui.composable import ComposableHook, composable

    def draw(prompt: str, cfg: float = 5.0) -> Any:
        cond = Conditioning(sdxl, prompt, "blurry", steps=2, composable=True)
        hook = ComposableHook(cond, 2) if cond.composable else None
        with composable(sdxl.unet, hook):
            return sdxl(**cond.kwargs, num_inference_steps=2, width=64, height=64, output_type="np",
                        guidance_scale=cfg, num_images_per_prompt=2,
                        generator=[torch.Generator().manual_seed(s) for s in (1, 2)]).images

    plain = draw("a red house")
    halves = draw("a red house :0.5 AND a red house :0.5")
    assert abs(plain - halves).max() < 1e-3
    assert abs(draw("a red house :2", cfg=2.5) - plain).max() < 1e-3
    mixed = draw("a red house AND a blue car")
    assert mixed.shape == plain.shape and abs(mixed - plain).max() > 1e-3
