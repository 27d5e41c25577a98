"""``gan-dissect``: dissect a saved GAN post hoc, with the same views the callback writes.

The command loads a generator from a Lightning checkpoint or from a ``package.module:callable``
factory, runs :func:`~gan_dissect_callbacks.engines.dissection.dissect` on it once and writes

* the JSON report, atomically, to ``OUT/dissection/step_XXXXXXX.json`` and
  ``OUT/dissection/latest.json`` (the layout :class:`DissectionCallback` uses under a run's
  log directory);
* one TensorBoard event file in ``OUT`` with the callback's views, drawn by the same functions
  (:mod:`gan_dissect_callbacks.reporting.dissection`): the per-category scalars, the
  best-IoU histograms, the unit galleries, the unit-class chart and the units table;

and prints the per-layer summary lines (``layer4: 512 units, 86 object, ...``) and where to look.
A plain-text progress line goes to stderr.

Usage::

    gan-dissect run.ckpt --layers generator.layer2 generator.layer3
    gan-dissect gan_dissect_callbacks.demos.pretrained:load_pretrained_scene_gan \\
        --layers generator.layer3 --num-samples 1024 --out runs/posthoc

**Step axis.** Everything is logged at ``--step``; by default the number of training batches
recorded in the checkpoint (the axis of ``self.log`` and of the callback), 0 for a factory. So
dissecting a run's checkpoints with ``--out`` set to the run's log directory puts the post-hoc
points next to its training curves. When ``OUT/dissection/latest.json`` holds an earlier step of
the same layers, label stability is measured against it, as the callback does between
dissections.

**Exit codes.** 0 on success; 2 for bad input found before the dissection starts (options out of
range, a missing checkpoint, a factory that cannot be imported, an unknown layer: each with one
message naming the fix); 1 when the dissection itself rejects what the model or segmenter
produce (e.g. images outside ``[-1, 1]``).


The options are in :mod:`.parser`, the loading of the generator and the segmenter in
:mod:`.loading`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

from gan_dissect_callbacks.checkpoints import checkpoint_step
from gan_dissect_callbacks.cli.loading import (
    DEFAULT_CHECKPOINT_CLASS,
    load_generator,
    load_object,
    load_segmenter,
    move_segmenter,
)
from gan_dissect_callbacks.cli.parser import build_parser

__all__ = [
    "DEFAULT_CHECKPOINT_CLASS",
    "build_parser",
    "checkpoint_step",
    "load_generator",
    "load_object",
    "load_segmenter",
    "main",
]


class _Progress:
    """``progress(done, total)`` for :func:`dissect`: one plain-text line on ``stream``.

    On a terminal the line is redrawn in place; elsewhere (a log file, a pipe) each update is a
    line of its own, so logs stay readable.
    """

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.start = time.perf_counter()
        self.inline = bool(getattr(stream, "isatty", lambda: False)())

    def __call__(self, done: int, total: int) -> None:
        done = min(done, total)
        filled = round(20 * done / total)
        line = (
            f"dissecting {done}/{total} samples [{'#' * filled}{'.' * (20 - filled)}] "
            f"{time.perf_counter() - self.start:.1f} s"
        )
        end = "\n" if done >= total or not self.inline else ""
        self.stream.write(("\r" if self.inline else "") + line + end)
        self.stream.flush()


def _previous_summary(latest: Path, report: Any) -> dict[str, Any] | None:
    """The summary of ``latest`` when it is an earlier dissection of the same layers."""
    from gan_dissect_callbacks.engines.dissection import DissectionReport
    from gan_dissect_callbacks.reporting.dissection import summarise

    if not latest.is_file():
        return None
    try:
        previous = DissectionReport.from_json(latest)
    except (ValueError, KeyError, TypeError):
        return None  # not a report of this package; nothing to compare with
    if previous.step is None or report.step is None or previous.step >= report.step:
        return None
    if set(previous.layers) != set(report.layers):
        return None
    return summarise(previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``gan-dissect`` with ``argv`` (``sys.argv[1:]`` when ``None``); returns the exit code.

    Usage errors exit through ``SystemExit(2)`` with argparse's message, as any command does.
    """
    from gan_dissect_callbacks.engines.dissection import dissect

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(
            f"Expected argument `--device` to be cpu, cuda or cuda:N, but got {args.device!r}."
        )
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("Expected a CUDA device for `--device cuda`, but CUDA is not available here.")

    try:
        model, saved_step = load_generator(args.target, checkpoint_class=args.module)
        segmenter = load_segmenter(args.segmenter)
        generator = _analysed(model, args.layers, args.latent_dim)
    except (FileNotFoundError, ImportError, TypeError, ValueError) as err:
        parser.error(str(err))
    model.to(device)
    move_segmenter(segmenter, device)
    step = args.step if args.step is not None else (saved_step or 0)

    try:
        report = dissect(
            generator,
            args.layers,
            segmenter,
            num_samples=args.num_samples,
            batch_size=args.batch_size,
            seed=args.seed,
            rule=args.rule,
            quantile=args.quantile,
            iou_cutoff=args.iou_cutoff,
            top_k=args.top_k,
            top_n=args.gallery_units,
            progress=_Progress(sys.stderr),
            step=step,
        )
    except (TypeError, ValueError) as err:
        print(f"gan-dissect: error: the dissection failed: {err}", file=sys.stderr)
        return 1
    _write(Path(args.out), report)
    return 0


def _analysed(model: nn.Module, layers: Sequence[str], latent_dim: int | None) -> Any:
    """The generator to dissect, its layers checked; a missing latent size names the option."""
    from gan_dissect_callbacks.engines.generator import AnalysedGenerator

    try:
        generator = AnalysedGenerator(model, latent_dim=latent_dim)
    except ValueError as err:
        raise ValueError(f"{err} On the command line: --latent-dim N.") from err
    generator.check_layers(layers)
    return generator


def _write(out: Path, report: Any) -> None:
    from torch.utils.tensorboard import SummaryWriter

    from gan_dissect_callbacks.reporting.dissection import log_dissection, summarise
    from gan_dissect_callbacks.reporting.writing import ReportOutput

    output = ReportOutput(out / "dissection", [SummaryWriter(log_dir=str(out))])
    summary = summarise(report, _previous_summary(out / "dissection" / "latest.json", report))
    step_file = output.write_json(report.step, report.to_dict())[0]
    try:
        for writer in output.tensorboard():
            log_dissection(writer, report, summary, write_layout=True)
    finally:
        for writer in output.writers:
            writer.close()
    print(report.summary())
    print(f"\nreport:      {step_file}")
    print(f"tensorboard: tensorboard --logdir {out} --samples_per_plugin images=100")
