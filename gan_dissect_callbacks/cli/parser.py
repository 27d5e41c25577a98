"""The ``gan-dissect`` command line: its options, each checked as it is parsed."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from gan_dissect_callbacks.arguments import THRESHOLD_RULES, check_fraction, check_int
from gan_dissect_callbacks.cli.loading import DEFAULT_CHECKPOINT_CLASS

__all__ = ["build_parser"]


def _checked(
    convert: Callable[[str], Any], check: Callable[..., Any], option: str, **limits: Any
) -> Callable[[str], Any]:
    """An argparse ``type`` that converts the text, then checks it with the package's check."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            value = text  # the check names the option and shows what came
        try:
            return check(value, option, **limits)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return parse


def _int_at_least(low: int, option: str) -> Callable[[str], int]:
    return _checked(int, check_int, option, minimum=low)


def _fraction(option: str, *, closed_low: bool) -> Callable[[str], float]:
    return _checked(float, check_fraction, option, closed_low=closed_low)


def build_parser() -> argparse.ArgumentParser:
    """The ``gan-dissect`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="gan-dissect",
        description=(
            "Dissect a GAN post hoc: which generator units draw which concepts. Writes a JSON "
            "report and the TensorBoard views of DissectionCallback under --out."
        ),
        epilog=(
            "examples:\n"
            "  gan-dissect lightning_logs/version_0/checkpoints/last.ckpt "
            "--layers generator.layer2 generator.layer3\n"
            "  gan-dissect gan_dissect_callbacks.demos.pretrained:load_pretrained_scene_gan "
            "--layers generator.layer3 --num-samples 1024"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "target",
        metavar="CHECKPOINT_OR_FACTORY",
        help="a Lightning .ckpt file, or 'package.module:callable' returning an nn.Module",
    )
    parser.add_argument(
        "--layers",
        nargs="+",
        required=True,
        metavar="LAYER",
        help="dotted names of the layers to dissect, e.g. generator.layer3",
    )
    parser.add_argument(
        "--module",
        metavar="PACKAGE.MODULE:CLASS",
        help=f"the LightningModule class that saved the checkpoint ({DEFAULT_CHECKPOINT_CLASS})",
    )
    parser.add_argument(
        "--segmenter",
        default="toy",
        metavar="toy|PACKAGE.MODULE:FACTORY",
        help="'toy' (the toy-world segmenter) or a factory returning a segmenter (default toy)",
    )
    parser.add_argument(
        "--num-samples", type=_int_at_least(1, "--num-samples"), default=512, metavar="N"
    )
    parser.add_argument("--batch-size", type=_int_at_least(1, "--batch-size"), default=64)
    parser.add_argument("--seed", type=int, default=0, help="seed of the latents (default 0)")
    parser.add_argument("--rule", choices=THRESHOLD_RULES, default="quantile")
    parser.add_argument(
        "--quantile",
        type=_fraction("--quantile", closed_low=False),
        default=0.99,
        help="quantile of the quantile rule (default 0.99: each unit's top 1%%)",
    )
    parser.add_argument(
        "--iou-cutoff",
        type=_fraction("--iou-cutoff", closed_low=True),
        default=0.04,
        help="a unit is interpretable when its best IoU exceeds this (default 0.04)",
    )
    parser.add_argument(
        "--top-k",
        type=_int_at_least(0, "--top-k"),
        default=6,
        help="top-activating samples kept per unit (default 6)",
    )
    parser.add_argument(
        "--gallery-units",
        type=_int_at_least(0, "--gallery-units"),
        default=12,
        help="units per layer in the TensorBoard gallery; 0 for none (default 12)",
    )
    parser.add_argument(
        "--latent-dim",
        type=_int_at_least(1, "--latent-dim"),
        help="size of standard-normal latents, for a model without sample_latents or latent_dim",
    )
    parser.add_argument(
        "--out", default="runs/dissect", help="output folder (default runs/dissect)"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument(
        "--step",
        type=_int_at_least(0, "--step"),
        help="step to log at (default: training batches in the checkpoint; 0 for a factory)",
    )
    return parser
