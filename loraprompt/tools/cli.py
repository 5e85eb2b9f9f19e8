"""`loraprompt merge|convert|resize|extract`: argument parsing and reports for the tools."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from loraprompt.errors import LoraPromptError, ToolError

FORMATS = ("kohya", "peft", "comfyui", "bfl", "xlabs")  # = tools.writer.FORMATS, without importing torch

EPILOG = {
    "merge": "LoRA spec: PATH[:STRENGTH[:UNET]] (one number sets both text encoder and UNet). With "
             "--checkpoint the LoRAs are merged into it; without, into one LoRA (exact, or --rank/--energy).",
    "convert": "The factors are copied bit for bit, metadata kept; kohya's alpha tensors become PEFT's "
               "lora_alpha (and come back in the factors' dtype).",
    "resize": "Prints, per module, the rank before/after and the fraction of its norm kept.",
    "extract": "SVD of (tuned - base) per weight; both checkpoints in one layout.",
}


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """Arguments of one of the four tool commands."""
    parser.epilog = EPILOG[name]
    parser.add_argument("-o", "--output", required=True, type=Path, help="output file (or folder)")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing output (a file, or a folder that is empty or a diffusers model)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bar" if name != "convert" else "accepted for scripts; convert shows no progress")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    if name == "convert":
        parser.add_argument("input", type=Path, help="LoRA file (kohya, PEFT/diffusers, ComfyUI, BFL or XLabs)")
        parser.add_argument("--to", required=True, choices=FORMATS,
                            help="target layout (comfyui/bfl/xlabs name transformer modules natively)")
        return
    parser.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), help="output dtype (default: the input's)")
    parser.add_argument("--device", default="cpu", metavar="{cpu,cuda,cuda:N,auto}",
                        help="where the arithmetic runs (default: cpu; auto: cuda when available); tensors "
                             "are read and written on the CPU" + (" (merges into a checkpoint)" if name == "merge" else ""))
    if name == "merge":
        parser.add_argument("loras", nargs="+", help="LoRA specs PATH[:STRENGTH[:UNET]]")
        parser.add_argument("--checkpoint", type=Path, help="single-file .safetensors or diffusers folder")
        parser.add_argument("--no-family-check", action="store_true", help="merge even if families differ")
        parser.add_argument("--layout", choices=("single-file", "diffusers"),
                            help="output layout (default: the checkpoint's; either can be written as the other)")
    elif name == "resize":
        parser.add_argument("input", type=Path, help="LoRA file")
    elif name == "extract":
        parser.add_argument("tuned", type=Path, help="fine-tuned checkpoint")
        parser.add_argument("base", type=Path, help="its base checkpoint")
        parser.add_argument("--min-diff", type=float, default=0.0, help="skip weights whose max |diff| is <= this")
        parser.add_argument("--unet-only", action="store_true", help="leave the text encoders out")
    if name in ("merge", "extract"):
        parser.add_argument("--variant", metavar="NAME", help="diffusers folders: read the NAME variant's weights "
                            "(<stem>.NAME.safetensors, e.g. fp16) instead of the plain ones")
    target = parser.add_mutually_exclusive_group(required=name in ("resize", "extract"))
    target.add_argument("--rank", type=int, help="target rank")
    target.add_argument("--energy", type=float, help="smallest rank keeping this fraction of each module's norm")
    parser.add_argument("--conv-rank", type=int, help="rank for 3x3 conv modules (default: --rank; needs --rank)")
    default = ("kohya, or peft for an SD3/Flux/Wan transformer" if name == "extract" else
               "the input's" if name == "resize" else "the first input's")
    parser.add_argument("--format", choices=FORMATS,
                        help=f"output LoRA layout (default: {default}); comfyui/bfl/xlabs name transformer modules natively")


def parse_lora_spec(text: str) -> tuple[str, float, float]:
    """`path[:te[:unet]]` -> (path, te, unet); numbers are read from the right so paths may hold ':'."""
    parts = text.split(":")
    numbers: list[float] = []
    while len(parts) > 1 and len(numbers) < 2:
        try:
            numbers.insert(0, float(parts[-1]))
        except ValueError:
            break
        parts.pop()
    path = ":".join(parts)
    if not path:
        raise ToolError(f"LoRA spec {text!r} has no path")
    if len(numbers) < 2 and len(parts) > 1 and not Path(path).exists():
        head, _, tail = path.rpartition(":")
        if any(p and Path(p).is_file() for p in (head, head.rpartition(":")[0])):  # PATH:abc, PATH:abc:0.5, PATH:0.5:abc
            raise ToolError(f"LoRA spec {text!r}: strength {tail!r} is not a number (PATH[:STRENGTH[:UNET]])")
    te = numbers[0] if numbers else 1.0
    unet = numbers[1] if len(numbers) > 1 else te
    return path, te, unet


def _target(args: argparse.Namespace) -> Any:
    from loraprompt.tools.svd import RankTarget

    if args.conv_rank is not None and args.rank is None:
        raise ToolError("--conv-rank sets the rank of 3x3 convs beside --rank; with --energy every module "
                        "takes the rank its energy needs, and without a rank nothing is cut")
    if args.rank is None and args.energy is None:
        return None
    return RankTarget(rank=args.rank, energy=args.energy, conv_rank=args.conv_rank)


def _run(args: argparse.Namespace) -> Any:
    progress = not args.quiet
    if args.command == "convert":
        from loraprompt.tools.convert import convert_lora

        return convert_lora(args.input, args.output, args.to, force=args.force)
    if args.command == "resize":
        from loraprompt.tools.resize import resize_lora

        return resize_lora(args.input, args.output, _target(args), fmt=args.format, dtype=args.dtype,
                           force=args.force, progress=progress, device=args.device)
    if args.command == "extract":
        from loraprompt.tools.extract import extract_lora

        components = ("unet", "transformer") if args.unet_only else ("unet", "transformer", "text_encoder", "text_encoder_2")
        return extract_lora(args.tuned, args.base, args.output, _target(args), fmt=args.format,
                            dtype=args.dtype, min_diff=args.min_diff, components=components,
                            force=args.force, progress=progress, device=args.device, variant=args.variant)
    specs = [parse_lora_spec(s) for s in args.loras]
    if args.checkpoint is not None:
        from loraprompt.tools.merge import LoraSpec, merge_checkpoint

        if args.rank is not None or args.energy is not None or args.conv_rank is not None or args.format:
            raise ToolError("--rank/--energy/--conv-rank/--format apply to LoRA merges, not to merges into a checkpoint")
        return merge_checkpoint(args.checkpoint, [LoraSpec(*s) for s in specs], args.output, dtype=args.dtype,
                                layout=args.layout, family="" if args.no_family_check else None,
                                force=args.force, progress=progress, device=args.device, variant=args.variant)
    from loraprompt.tools.lora_merge import merge_loras

    if args.layout or args.no_family_check or args.device != "cpu" or args.variant:
        raise ToolError("--layout/--no-family-check/--device/--variant apply to merges into a checkpoint (--checkpoint)")
    if any(te != unet for _, te, unet in specs):
        raise ToolError("a LoRA merge takes one weight per LoRA (PATH:WEIGHT)")
    return merge_loras([p for p, _, _ in specs], [te for _, te, _ in specs], args.output, target=_target(args),
                       fmt=args.format, dtype=args.dtype, force=args.force, progress=progress)


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in asdict(value).items()}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _summary(report: Any) -> str:
    data = _plain(report)
    lines = [f"wrote {data.pop('output')}"]
    rows = data.pop("modules", None)
    diagnostics = data.pop("diagnostics", [])
    lines += [f"  {k}: {v}" for k, v in data.items()]
    if isinstance(rows, list):
        for row in rows:
            ranks = f"{row.get('old_rank', '')}->{row['new_rank']}" if "new_rank" in row else str(row["rank"])
            lines.append(f"  {row['key']:<72} rank {ranks:<8} kept {row['kept']:.4f}")
        if rows:
            lines.append(f"  min kept: {min(r['kept'] for r in rows):.4f}")
    elif rows is not None:
        lines.append(f"  modules: {rows}")
    lines += [f"  {d['severity']}: {d['message']}" for d in diagnostics]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run one tool command; errors are printed as one line naming the file, exit status 1."""
    try:
        report = _run(args)
    except LoraPromptError as exc:
        print(f"loraprompt {args.command}: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(_plain(report), indent=2, default=str) if args.json else _summary(report))
    return 0
