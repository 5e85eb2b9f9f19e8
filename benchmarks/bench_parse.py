"""Prompts per second for ``loraprompt.parse`` against a plain regex tag scan, measured in the same run.

Run: ``python benchmarks/bench_parse.py [--prompts 5000] [--repeat 5]``. The peer is what most tools do:
``re.finditer(r"<(\\w+):([^>]+)>")`` over the prompt, collecting type and args. parse() also strips
comments, splits arguments, interprets every LoRA tag, checks contexts and builds diagnostics; a second
reference line shows A1111's own per-prompt work (strip tags, split items) for scale.
"""

from __future__ import annotations

import argparse
import random
import re
import time
from collections.abc import Callable

from loraprompt.syntax import parse

WORDS = ["masterpiece", "best quality", "1girl", "solo", "long hair", "looking at viewer", "smile", "outdoors",
         "city street", "night", "neon lights", "detailed background", "cinematic lighting", "portrait",
         "from side", "blue eyes", "school uniform", "rain", "umbrella", "depth of field", "bokeh", "sky"]
LORAS = ["add_detail", "epiNoiseoffset_v2", "more_details", "film grain", "Style-Ghibli v3", "char_alice",
         "lcm-lora-sdv1-5", "LowRA", "детали", "光影"]


def realistic_prompt(rng: random.Random) -> str:
    """A prompt like the ones people share: tags, emphasis, a few LoRAs, sometimes editing or comments."""
    parts = []
    for _ in range(rng.randint(6, 22)):
        word = rng.choice(WORDS)
        roll = rng.random()
        if roll < 0.15:
            word = f"({word}:{rng.choice(['1.1', '1.2', '1.3', '0.8'])})"
        elif roll < 0.2:
            word = f"[{word}:{rng.choice(WORDS)}:{rng.choice(['0.3', '5', '10'])}]"
        parts.append(word)
    for _ in range(rng.choice([0, 1, 1, 2, 2, 3, 4])):
        name, weight = rng.choice(LORAS), rng.choice(["0.5", "0.7", "0.8", "1", "-1.5", "1.2"])
        roll = rng.random()
        tag = f"<lora:{name}:{weight}>"
        if roll < 0.1:
            tag = f"<lora:{name}:{weight}:lbw=MIDD>"
        elif roll < 0.15:
            tag = f"<lora:{name}:0@0,1@0.5>"
        elif roll < 0.2:
            tag = f"<lyco:{name}:{weight}:te=0.5>"
        parts.insert(rng.randrange(len(parts) + 1), tag)
    text = ", ".join(parts)
    if rng.random() < 0.1:
        text += " BREAK " + ", ".join(rng.sample(WORDS, 3))
    if rng.random() < 0.1:
        text += "\n# variant notes"
    return text


TAG = re.compile(r"<(\w+):([^>]+)>")


def regex_scan(prompt: str) -> list[tuple[str, str]]:
    """The peer: a plain regex scan for tags."""
    return [(m.group(1), m.group(2)) for m in TAG.finditer(prompt)]


def strip_and_split(prompt: str) -> tuple[str, list[tuple[str, list[str]]]]:
    """A second reference: what A1111 itself does per prompt (strip tags, split their items on ':')."""
    found: list[tuple[str, list[str]]] = []

    def cut(m: re.Match[str]) -> str:
        found.append((m.group(1), m.group(2).split(":")))
        return ""

    return TAG.sub(cut, prompt), found


def rates(funcs: dict[str, Callable[[str], object]], prompts: list[str], repeat: int) -> dict[str, float]:
    """Best-of-``repeat`` prompts per second for each function, interleaved so load noise hits all alike."""
    best = dict.fromkeys(funcs, float("inf"))
    for _ in range(repeat):
        for label, func in funcs.items():
            start = time.perf_counter()
            for p in prompts:
                func(p)
            best[label] = min(best[label], time.perf_counter() - start)
    return {label: len(prompts) / seconds for label, seconds in best.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prompts", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    rng = random.Random(1234)
    prompts = [realistic_prompt(rng) for _ in range(args.prompts)]
    tags = sum(len(regex_scan(p)) for p in prompts)
    print(f"{len(prompts)} prompts, {tags} tags, mean {sum(map(len, prompts)) / len(prompts):.0f} characters")
    result = rates({
        "regex scan (peer)": regex_scan,
        "regex strip + split": strip_and_split,
        "parse(profile='loraprompt')": lambda p: parse(p, profile="loraprompt"),
        "parse(profile='a1111')": lambda p: parse(p, profile="a1111"),
    }, prompts, args.repeat)
    peer = result["regex scan (peer)"]
    for label, value in result.items():
        ratio = "" if value == peer else f"   {peer / value:5.1f}x the regex scan's time per prompt"
        print(f"{label:28} {value:12,.0f} prompts/s{ratio}")


if __name__ == "__main__":
    main()
