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

**What is dissected.** ``--generator NAME`` picks a submodule of the loaded module (an EMA
copy: ``--generator generator_ema --layers layer4``). A pruning mask that
:class:`~gan_dissect_callbacks.callbacks.artifact_pruning.ArtifactPruningCallback` saved in the
checkpoint is applied first, so the labels are those of the generator training went on with;
``--no-pruning-mask`` dissects the unpruned one. A layer that is the image itself, or that has
fewer than 8 units, gets a warning naming it.

**Existing reports.** A report of the same step already in ``OUT/dissection`` is not replaced
unless ``--overwrite`` is given.

**Several processes.** Under ``torchrun --nproc_per_node N -m gan_dissect_callbacks.cli ...``
every process joins the group (:mod:`.processes`), dissects every N-th sample, and the results
are merged exactly; only rank 0 prints and writes.

**Exit codes.** 0 on success; 2 for bad input found before the dissection starts (options out of
range, a missing checkpoint, a factory that cannot be imported, an unknown layer, a report that
would be replaced: each with one message naming the fix); 1 when the dissection itself rejects
what the model or segmenter produce (e.g. images outside ``[-1, 1]``).

The options are in :mod:`.parser` (which imports neither torch nor Lightning, so ``--help`` is
quick), the loading of the generator and the segmenter in :mod:`.loading`, the checks before the
dissection in :mod:`.preflight`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from gan_dissect_callbacks.cli.loading import (
    DEFAULT_CHECKPOINT_CLASS,
    load_generator,
    load_object,
    load_segmenter,
)
from gan_dissect_callbacks.cli.parser import build_parser

if TYPE_CHECKING:
    import torch

    from gan_dissect_callbacks.checkpoints import checkpoint_step
    from gan_dissect_callbacks.engines.artifacts.pruning import PruningMask
    from gan_dissect_callbacks.engines.generator import AnalysedGenerator

__all__ = [
    "DEFAULT_CHECKPOINT_CLASS",
    "build_parser",
    "checkpoint_step",
    "load_generator",
    "load_object",
    "load_segmenter",
    "main",
]


def __getattr__(name: str) -> Any:
    # Importing the checkpoint reader imports torch, which --help does not need.
    if name == "checkpoint_step":
        from gan_dissect_callbacks.checkpoints import checkpoint_step

        return checkpoint_step
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    Under ``torchrun`` every process runs this; only rank 0 prints and writes.
    """
    parser = build_parser()
    args = parser.parse_args(argv)

    from gan_dissect_callbacks.cli.processes import process_group
    from gan_dissect_callbacks.engines.distributed import (
        AnalysisFailedElsewhere,
        agree_on_failure,
        dist_info,
    )

    with process_group(_device(parser, args.device)) as device:
        rank = dist_info()[0]
        try:
            # Every process learns whether any one failed, so none waits in the dissection's
            # collectives for a process that has left.
            with agree_on_failure("loading what to dissect"):
                generator, segmenter, step = _prepare(args, device, main_process=rank == 0)
        except (AnalysisFailedElsewhere, *_BAD_INPUT) as err:
            if rank == 0:
                parser.error(str(err))
            return 2
        return _dissect(args, generator, segmenter, step, main_process=rank == 0)


#: What loading raises for bad input (exit code 2, with the message).
_BAD_INPUT = (FileNotFoundError, FileExistsError, ImportError, TypeError, ValueError)


def _device(parser: argparse.ArgumentParser, text: str) -> torch.device:
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        parser.error(f"Expected argument `--device` to be cpu, cuda or cuda:N, but got {text!r}.")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("Expected a CUDA device for `--device cuda`, but CUDA is not available here.")
    return device


def _prepare(
    args: argparse.Namespace, device: torch.device, *, main_process: bool
) -> tuple[AnalysedGenerator, Any, int]:
    """The generator (pruned as saved), the segmenter and the step; bad input raises."""
    from gan_dissect_callbacks.cli.loading import (
        apply_saved_pruning,
        move_segmenter,
        select_generator,
    )
    from gan_dissect_callbacks.cli.preflight import check_not_written, layer_warnings

    model, saved_step = load_generator(args.target, checkpoint_class=args.module)
    segmenter = load_segmenter(args.segmenter)
    generator = select_generator(model, args.generator, latent_dim=args.latent_dim)
    try:
        generator.check_layers(args.layers)
    except ValueError as err:
        if args.generator is None:
            raise
        raise ValueError(
            f"{err} Layers are named relative to --generator {args.generator!r}."
        ) from err
    mask = None
    if args.pruning_mask and Path(args.target).is_file():
        mask = apply_saved_pruning(args.target, model, generator)
    step = args.step if args.step is not None else (saved_step or 0)
    if main_process:  # the process that writes
        check_not_written(Path(args.out) / "dissection", step, overwrite=args.overwrite)
    model.to(device)
    move_segmenter(segmenter, device)
    if main_process:
        if mask is not None:
            print(
                f"pruning mask from the checkpoint: {_describe(mask)} pruned (pass "
                "--no-pruning-mask to dissect the unpruned model)"
            )
        for warning in layer_warnings(generator, args.layers, seed=args.seed):
            print(f"gan-dissect: warning: {warning}", file=sys.stderr)
    return generator, segmenter, step


def _describe(mask: PruningMask) -> str:
    """``generator.layer3 units 0, 5; generator.layer4 unit 2``."""
    parts = []
    for layer in mask.layers:
        units = mask.units(layer)
        parts.append(f"{layer} unit{'s' if len(units) > 1 else ''} {', '.join(map(str, units))}")
    return "; ".join(parts)


def _dissect(
    args: argparse.Namespace,
    generator: AnalysedGenerator,
    segmenter: Any,
    step: int,
    *,
    main_process: bool,
) -> int:
    from gan_dissect_callbacks.engines.dissection import dissect
    from gan_dissect_callbacks.engines.distributed import AnalysisFailedElsewhere

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
            iqr_cutoff=args.iqr_cutoff,
            top_k=args.top_k,
            top_n=args.top_n,
            progress=_Progress(sys.stderr) if main_process else None,
            step=step,
        )
    except (TypeError, ValueError, AnalysisFailedElsewhere) as err:
        if main_process:
            print(f"gan-dissect: error: the dissection failed: {err}", file=sys.stderr)
        return 1
    if main_process:
        _write(Path(args.out), report)
    return 0


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
    print(f"tensorboard: tensorboard --logdir {out} --samples_per_plugin images=1000")
