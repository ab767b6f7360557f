"""What moves the cost of an image, measured side by side in one run on one pipeline:

    python bench/imagine.py --device cpu --json out.json              # tiny SD2-shaped, ~1 min
    python bench/imagine.py --device cuda --full-size --json out.json # SD2's architecture
    [--batch 4] [--repeats 3] [--compile]

- ``baseline``: the model's scheduler (DDIM, as SD 2.1 ships) at the default steps (20 at
  full size).
- ``dpm++``: DPM-Solver++ (multistep) at fewer steps (``--fast-steps``, 12 at full size),
  which the diffusers docs give as reaching in about 20 steps what DDIM needs 50 for.
- ``channels_last``: the UNet's weights in channels-last layout, default steps.
- ``img2img``: drawing from a picture (diffusers' image-to-image pipeline made from the same
  one with ``from_pipe``), strength 0.6 (the bot's default), default steps: only that share
  of the steps runs, plus encoding the picture; ``img2img, one at a time`` is the same
  without batching, what the bot's batches by strength save.
- ``previews, every step`` and ``previews, every 2 s``: the baseline while a small JPEG
  preview of the batch's first image is decoded with a tiny autoencoder (TAESD's
  architecture, random weights) every step (the worst case) or as often as the bot's
  default edit interval allows; the target is at most 5% over the baseline.
- ``a fast model's shape``: what a few-step distilled model (SD-Turbo: SD 2.1's UNet at
  512 px, one step, no guidance, so no second batch half) costs, on the same pipeline at
  2/3 of the native side: the fast model beside the default (BOT_IMAGINE__MODELS).
- ``upscale 2x`` and ``upscale 2x, one at a time``: the Upscale button's task (the real
  handler, SD x4 upscaler's architecture at full size) on pictures of the native size,
  batched and not; ``upscale 4x`` makes the same output from a picture half as large: the
  model works at 384 px in both (2x halves its picture first), so they cost the same, and
  4x of a given picture costs about four times its 2x.
  ``Real-ESRGAN 4x (spandrel)``, where spandrel imports (the GPU machine has torchvision),
  is the one-pass alternative the handler's docstring weighs, on the same picture. On CUDA
  each upscale row also gives its peak memory (``peak_gib``).
- ``compile`` (with ``--compile``): ``torch.compile`` of the UNet, default steps; its
  compilation time (one size, two batch sizes, as the bot warms up) is reported apart.

Each variant makes ``--batch`` images per call at the native size, after one warm-up call,
``--repeats`` times; reported: seconds per image (median) and the ratio to the baseline.
The weights are random (``--full-size``: SD2's architecture), so this measures cost, not
quality: fewer steps trade some detail, which a person judges on the real model.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.executor import NoContext  # noqa: E402
from bench.workloads import BenchImage  # noqa: E402
from handlers.base import LoadSpec  # noqa: E402
from handlers.imagine import PREVIEW_SIDE, encode_jpeg  # noqa: E402
from handlers.upscale import UpscaleRequest, UpscaleTask  # noqa: E402

STRENGTH = 0.6
"""The bot's default strength (BOT_IMAGINE__DEFAULT_STRENGTH)."""


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build(device: str, full_size: bool) -> Any:
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    return BenchImage(full_size)._build(LoadSpec("bench", device, dtype))


def images_per_second(pipe: Any, size: int, steps: int, batch: int, device: str) -> float:
    sync(device)
    started = time.perf_counter()
    with torch.inference_mode():
        pipe(["a lighthouse at dusk"] * batch, height=size, width=size,
             num_inference_steps=steps, output_type="pt")  # fmt: skip
    sync(device)
    return (time.perf_counter() - started) / batch


def fast_model_image(pipe: Any, size: int, steps: int, batch: int, device: str) -> float:
    """SD-Turbo's way: one step at 2/3 of the side, guidance 0 (no unconditional half)."""
    side = size * 2 // 3 // 8 * 8
    sync(device)
    started = time.perf_counter()
    with torch.inference_mode():
        pipe(["a lighthouse at dusk"] * batch, height=side, width=side, num_inference_steps=1,
             guidance_scale=0.0, output_type="pt")  # fmt: skip
    sync(device)
    return (time.perf_counter() - started) / batch


def seconds_from_picture(pipe: Any, size: int, steps: int, batch: int, device: str) -> float:
    picture = Image.new("RGB", (size, size), (200, 120, 40))
    sync(device)
    started = time.perf_counter()
    with torch.inference_mode():
        pipe(["a lighthouse at dusk"] * batch, image=[picture] * batch, strength=STRENGTH,
             num_inference_steps=steps, output_type="pt")  # fmt: skip
    sync(device)
    return (time.perf_counter() - started) / batch


def previewing(decoder: Any, every_s: float) -> Any:
    """A step callback that sends previews as the bot's does: decoded, encoded, dropped."""

    def timed(pipe: Any, size: int, steps: int, batch: int, device: str) -> float:
        last = time.monotonic()

        def on_step(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict:
            nonlocal last
            if step + 1 < steps and time.monotonic() - last >= every_s:
                with torch.inference_mode():
                    image = decoder.decode(tensors["latents"][:1].to(decoder.dtype)).sample
                pixels = ((image / 2 + 0.5).clamp(0, 1) * 255).to(torch.uint8)
                encode_jpeg(pixels[0].permute(1, 2, 0).cpu().numpy(), PREVIEW_SIDE)
                last = time.monotonic()
            return tensors

        sync(device)
        started = time.perf_counter()
        with torch.inference_mode():
            pipe(["a lighthouse at dusk"] * batch, height=size, width=size,
                 num_inference_steps=steps, output_type="pt",
                 callback_on_step_end=on_step)  # fmt: skip
        sync(device)
        return (time.perf_counter() - started) / batch

    return timed


def measure(
    pipe: Any, size: int, steps: int, args: argparse.Namespace, batch: int | None = None,
    timed: Any = images_per_second,
) -> float:  # fmt: skip
    batch = batch or args.batch
    timed(pipe, size, steps, batch, args.device)  # warm-up
    runs = [timed(pipe, size, steps, batch, args.device) for _ in range(args.repeats)]
    return statistics.median(runs)


def photo_png(side: int) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def peak_gib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None


def upscale_rows(args: argparse.Namespace, size: int, steps: int) -> dict[str, dict[str, Any]]:
    """The upscale task's handler on its tiny or full-size model, loaded from disk as the
    bot loads it; seconds per picture, each row after a warm-up, and peak memory on CUDA."""
    dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as directory:
        if args.full_size:
            from bench.fullsize import upscaler

            source = upscaler(Path(directory) / "upscale")
        else:
            from tests.tinymodels import build_upscaler

            source = build_upscaler(Path(directory) / "upscale")
        task = UpscaleTask(steps=steps, max_side=4 * size)
        model = task.load(LoadSpec(str(source), args.device, dtype))
        variants = (
            ("upscale 2x", 2, size, args.batch),
            ("upscale 2x, one at a time", 2, size, 1),
            ("upscale 4x", 4, size // 2, args.batch),
        )
        for name, factor, side, batch in variants:
            requests = [UpscaleRequest(photo_png(side), factor, "a lighthouse at dusk", seed=k)
                        for k in range(batch)]  # fmt: skip

            def timed(*_: Any, requests: list[Any] = requests, model: Any = model) -> float:
                sync(args.device)
                started = time.perf_counter()
                outputs = task.run_batch(model, requests, NoContext())
                sync(args.device)
                assert all(o.pixels is not None for o in outputs), outputs  # type: ignore[union-attr]
                return (time.perf_counter() - started) / len(requests)

            if args.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            seconds = measure(None, size, steps, args, batch, timed)
            rows[name] = {"steps": steps, "s_per_image": seconds, "output": f"{side * factor}px",
                          "peak_gib": peak_gib(args.device)}  # fmt: skip
        del model
    esrgan = esrgan_row(args, size // 2)
    if esrgan is not None:
        rows["Real-ESRGAN 4x (spandrel)"] = esrgan
    return rows


def esrgan_row(args: argparse.Namespace, side: int) -> dict[str, Any] | None:
    """Real-ESRGAN x4plus's architecture (RRDBNet, 23 blocks, random weights) through
    spandrel, on ``args.batch`` pictures of ``side``; None where spandrel does not import."""
    try:
        from spandrel.architectures.ESRGAN import ESRGAN as RRDBNet
    except ImportError:
        return None
    dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
    net = RRDBNet(in_nc=3, out_nc=3, num_filters=64, num_blocks=23, scale=4).to(args.device, dtype)
    pictures = torch.rand(args.batch, 3, side, side, device=args.device, dtype=dtype)

    def timed(*_: Any) -> float:
        sync(args.device)
        started = time.perf_counter()
        with torch.inference_mode():
            net.eval()(pictures)
        sync(args.device)
        return (time.perf_counter() - started) / args.batch

    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    seconds = measure(None, side, 1, args, args.batch, timed)
    return {"steps": 1, "s_per_image": seconds, "output": f"{side * 4}px",
            "peak_gib": peak_gib(args.device)}  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    from diffusers import (
        AutoencoderTiny,
        AutoPipelineForImage2Image,
        DPMSolverMultistepScheduler,
    )

    bench = BenchImage(args.full_size)
    size, steps = bench.size, bench.steps
    fast_steps = args.fast_steps or max(2, round(steps * 0.6))
    pipe = build(args.device, args.full_size)
    ddim = pipe.scheduler
    rows: dict[str, dict[str, Any]] = {}
    rows["baseline"] = {"steps": steps, "s_per_image": measure(pipe, size, steps, args)}
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(
        ddim.config, algorithm_type="dpmsolver++"
    )
    rows["dpm++"] = {"steps": fast_steps, "s_per_image": measure(pipe, size, fast_steps, args)}
    rows["a fast model's shape"] = {
        "steps": 1, "s_per_image": measure(pipe, size, 1, args, timed=fast_model_image)
    }  # fmt: skip
    pipe.scheduler = ddim
    pipe.unet.to(memory_format=torch.channels_last)
    rows["channels_last"] = {"steps": steps, "s_per_image": measure(pipe, size, steps, args)}
    pipe.unet.to(memory_format=torch.contiguous_format)
    drawing = AutoPipelineForImage2Image.from_pipe(pipe)
    drawing.set_progress_bar_config(disable=True)
    for name, batch in (("img2img", args.batch), ("img2img, one at a time", 1)):
        seconds = measure(drawing, size, steps, args, batch, seconds_from_picture)
        rows[name] = {"steps": int(steps * STRENGTH), "s_per_image": seconds}
    decoder = AutoencoderTiny().to(args.device, pipe.vae.dtype).eval()  # TAESD's shape
    for name, every_s in (("previews, every step", 0.0), ("previews, every 2 s", 2.0)):
        seconds = measure(pipe, size, steps, args, timed=previewing(decoder, every_s))
        rows[name] = {"steps": steps, "s_per_image": seconds}
    if not args.no_upscale:
        del drawing, decoder
        rows |= upscale_rows(args, size, steps)
    if args.compile:
        pipe.unet = torch.compile(pipe.unet)
        started = time.perf_counter()
        for batch in (1, 2):
            images_per_second(pipe, size, 2, batch, args.device)
        compile_s = time.perf_counter() - started
        rows["compile"] = {
            "steps": steps,
            "s_per_image": measure(pipe, size, steps, args),
            "compile_s": compile_s,
        }
    base = rows["baseline"]["s_per_image"]
    for row in rows.values():
        row["vs_baseline"] = row["s_per_image"] / base
    return {
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "full_size": args.full_size,
        "size": size,
        "batch": args.batch,
        "variants": rows,
    }


def table(result: dict[str, Any]) -> str:
    lines = ["| variant | steps | s per image | vs baseline |", "| --- | --- | --- | --- |"]
    for name, row in result["variants"].items():
        extra = f" (compiling took {row['compile_s']:.0f} s)" if "compile_s" in row else ""
        if "output" in row:
            extra += f", {row['output']} out"
        if row.get("peak_gib") is not None:
            extra += f", peak {row['peak_gib']:.1f} GiB"
        lines.append(f"| {name} | {row['steps']} | {row['s_per_image']:.3f} | "
                     f"{row['vs_baseline']:.2f}x{extra} |")  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--full-size", action="store_true")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fast-steps", type=int, help="DPM-Solver++'s steps (default: 60%%)")
    parser.add_argument("--compile", action="store_true", help="also torch.compile the UNet")
    parser.add_argument("--no-upscale", action="store_true", help="leave the upscale rows out")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    torch.manual_seed(0)
    result = run(args)
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
