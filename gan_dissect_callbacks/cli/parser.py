"""The ``gan-dissect`` command line: its options, each checked as it is parsed.

Only the standard library and the package's argument checks are imported here, so that
``gan-dissect --help`` and a mistyped option answer at once; torch, Lightning and the views are
imported by :func:`~gan_dissect_callbacks.cli.main` once the options are parsed.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from gan_dissect_callbacks.arguments import THRESHOLD_RULES, check_fraction, check_int
from gan_dissect_callbacks.cli.loading import DEFAULT_CHECKPOINT_CLASS

__all__ = ["build_parser"]

EXAMPLES = """\
examples:
  # a checkpoint the demo saved (python -m gan_dissect_callbacks.demos train), with the post-hoc
  # points next to the training curves:
  gan-dissect runs/scenes/version_0/checkpoints/*.ckpt \\
      --layers generator.layer2 generator.layer3 --out runs/scenes/version_0
  # the EMA copy of a generator, its layers named relative to it:
  gan-dissect run.ckpt --module mypackage.gan:MyGAN --generator generator_ema --layers layer4
  # a factory, on 2 processes (each dissects half of the samples; rank 0 writes):
  torchrun --nproc_per_node 2 -m gan_dissect_callbacks.cli \\
      gan_dissect_callbacks.demos.pretrained:load_pretrained_scene_gan \\
      --layers generator.layer3 --num-samples 1024
"""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' line breaks and ends every option that has a default with it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        # A flag (no value to give) has nothing to show; None means "see the text".
        if action.nargs == 0 or action.default is None or action.default is argparse.SUPPRESS:
            return text
        if "%(default)" in text:
            return text
        return f"{text} (default: %(default)s)"


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
            "Dissect a GAN post hoc: which generator units draw which concepts. Writes a JSON\n"
            "report and the TensorBoard views of DissectionCallback under --out. Under torchrun\n"
            "the samples are split across the processes."
        ),
        epilog=EXAMPLES,
        formatter_class=_HelpFormatter,
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
        help="dotted names of the layers to dissect, e.g. generator.layer3 (relative to "
        "--generator when given)",
    )
    parser.add_argument(
        "--module",
        metavar="PACKAGE.MODULE:CLASS",
        help=f"the LightningModule class that saved the checkpoint (default: "
        f"{DEFAULT_CHECKPOINT_CLASS})",
    )
    parser.add_argument(
        "--generator",
        metavar="NAME",
        help="dissect this submodule of the loaded module, e.g. generator_ema (default: the "
        "loaded module itself)",
    )
    parser.add_argument(
        "--no-pruning-mask",
        dest="pruning_mask",
        action="store_false",
        help="dissect the unpruned model (by default, a pruning mask that "
        "ArtifactPruningCallback(prune=True) saved in the checkpoint is applied first)",
    )
    parser.add_argument(
        "--segmenter",
        default="toy",
        metavar="toy|PACKAGE.MODULE:FACTORY",
        help="'toy' (the toy-world segmenter) or a factory returning a segmenter",
    )
    parser.add_argument(
        "--num-samples",
        type=_int_at_least(1, "--num-samples"),
        default=512,
        metavar="N",
        help="generated images to dissect, over all processes",
    )
    parser.add_argument(
        "--batch-size",
        type=_int_at_least(1, "--batch-size"),
        default=64,
        metavar="N",
        help="images per forward pass",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the latents")
    parser.add_argument(
        "--rule", choices=THRESHOLD_RULES, default="quantile", help="threshold rule of the labels"
    )
    parser.add_argument(
        "--quantile",
        type=_fraction("--quantile", closed_low=False),
        default=0.99,
        help="quantile of the quantile rule (0.99: each unit's top 1%%)",
    )
    parser.add_argument(
        "--iou-cutoff",
        type=_fraction("--iou-cutoff", closed_low=True),
        default=0.04,
        help="a unit is interpretable when its best IoU exceeds this",
    )
    parser.add_argument(
        "--iqr-cutoff",
        type=_fraction("--iqr-cutoff", closed_low=True),
        default=0.01,
        help="... and, under --rule iqr, when its IQR exceeds this",
    )
    parser.add_argument(
        "--top-k",
        type=_int_at_least(0, "--top-k"),
        default=8,
        metavar="K",
        help="top-activating samples kept per unit",
    )
    parser.add_argument(
        "--top-n",
        type=_int_at_least(0, "--top-n"),
        default=12,
        metavar="N",
        help="best units per layer shown in the TensorBoard gallery; 0 for none",
    )
    parser.add_argument(
        "--latent-dim",
        type=_int_at_least(1, "--latent-dim"),
        metavar="N",
        help="size of standard-normal latents, for a model without sample_latents or latent_dim",
    )
    parser.add_argument("--out", default="runs/dissect", help="output folder")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a report of the same step already in --out (refused otherwise)",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="cpu, cuda or cuda:N; under torchrun, cuda is each process's cuda:LOCAL_RANK",
    )
    parser.add_argument(
        "--step",
        type=_int_at_least(0, "--step"),
        help="step to log at (default: the training batches in the checkpoint; 0 for a factory)",
    )
    return parser
