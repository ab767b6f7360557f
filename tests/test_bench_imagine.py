"""bench/imagine.py still swaps the scheduler and the layout on one pipeline and times each,
and runs the upscale handler (diffusers' scheduler, layout and upscaler APIs move between
releases); figures belong to the bench."""

from __future__ import annotations

import argparse

from bench import imagine


def test_each_variant_is_timed_against_the_baseline() -> None:
    args = argparse.Namespace(
        device="cpu", full_size=False, batch=1, repeats=1, fast_steps=None, compile=False,
        no_upscale=False,
    )  # fmt: skip
    result = imagine.run(args)
    variants = result["variants"]
    assert list(variants) == [
        "baseline",
        "dpm++",
        "a fast model's shape",
        "channels_last",
        "img2img",
        "img2img, one at a time",
        "previews, every step",
        "previews, every 2 s",
        "upscale 2x",
        "upscale 2x, one at a time",
        "upscale 4x",
    ]
    assert variants["img2img"]["steps"] == int(variants["baseline"]["steps"] * imagine.STRENGTH)
    assert variants["baseline"]["vs_baseline"] == 1.0
    assert variants["dpm++"]["steps"] < variants["baseline"]["steps"]
    assert all(row["s_per_image"] > 0 for row in variants.values())
    assert "| dpm++ | 2 |" in imagine.table(result)
    assert variants["upscale 4x"]["output"] == variants["upscale 2x"]["output"] == "64px"
