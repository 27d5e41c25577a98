"""``gan-dissect``: dissect a saved GAN post hoc, with the same views the callback writes.

The command loads a generator from a Lightning checkpoint or from a ``package.module:callable``
factory, runs :func:`~gan_dissect_callbacks.engines.dissection.dissect` on it once and writes

* the JSON report, atomically, to ``OUT/dissection/step_XXXXXXX.json`` and
  ``OUT/dissection/latest.json`` (the layout :class:`DissectionCallback` uses under a run's
  log directory);
* one TensorBoard event file in ``OUT`` with the callback's views, drawn by the same functions
  (:mod:`gan_dissect_callbacks.reporting.dissection_logging`): the per-category scalars, the
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

Example:
    >>> load_object("gan_dissect_callbacks.demos.gan:SceneGAN").__name__
    'SceneGAN'
    >>> load_object("gan_dissect_callbacks.demos.gan.SceneGAN")
    Traceback (most recent call last):
    ...
    ValueError: Expected a 'package.module:name' string such as \
'gan_dissect_callbacks.demos.pretrained:load_pretrained_scene_gan', but got \
'gan_dissect_callbacks.demos.gan.SceneGAN'.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

from gan_dissect_callbacks.checkpoints import checkpoint_step, read_checkpoint

__all__ = [
    "DEFAULT_CHECKPOINT_CLASS",
    "build_parser",
    "checkpoint_step",
    "load_generator",
    "load_object",
    "load_segmenter",
    "main",
]

#: The LightningModule that ``load_from_checkpoint`` uses when ``--module`` is not given.
DEFAULT_CHECKPOINT_CLASS = "gan_dissect_callbacks.demos.gan:SceneGAN"

_OBJECT_SPEC = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def load_object(spec: str, argument: str = "the object") -> Any:
    """Import ``"package.module:name"`` (``name`` may be dotted: ``"module:Class.method"``).

    Args:
        spec: the module to import and the attribute to read from it, separated by ``:``.
        argument: what the string is, for error messages (e.g. ``"--segmenter"``).

    Returns:
        The attribute.

    Raises:
        ValueError: if ``spec`` is not of the form ``package.module:name``.
        ImportError: if the module cannot be imported or has no such attribute.
    """
    if not isinstance(spec, str) or not _OBJECT_SPEC.fullmatch(spec):
        raise ValueError(
            "Expected a 'package.module:name' string such as "
            f"'gan_dissect_callbacks.demos.pretrained:load_pretrained_scene_gan', but got {spec!r}."
        )
    module_name, _, attribute = spec.partition(":")
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise ImportError(
            f"Could not import module {module_name!r} named by {argument} {spec!r}: {err}. Check "
            "the spelling and that the package is installed (or on PYTHONPATH)."
        ) from err
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise ImportError(
                f"Module {module_name!r} has no attribute {attribute!r} (from {argument} {spec!r})."
            )
        found = getattr(found, part)
    return found


def load_generator(
    target: str, *, checkpoint_class: str | None = None
) -> tuple[nn.Module, int | None]:
    """Load the model to dissect from a checkpoint path or a ``package.module:callable`` factory.

    Args:
        target: a Lightning checkpoint file, loaded with ``load_from_checkpoint`` of
            ``checkpoint_class``; or ``"package.module:callable"``, called without arguments, that
            returns an ``nn.Module`` (or an ``nn.Module`` instance itself).
        checkpoint_class: ``"package.module:ClassName"`` of the LightningModule that saved the
            checkpoint; :data:`DEFAULT_CHECKPOINT_CLASS` when ``None``. Only for checkpoints.

    Returns:
        ``(model, step)``: the model on the CPU in eval mode, and the checkpoint's number of
        training batches (:func:`checkpoint_step`; ``None`` for a factory).

    Raises:
        FileNotFoundError: if ``target`` looks like a path but no such file exists.
        ValueError: if ``target`` is neither, the checkpoint does not load, ``checkpoint_class``
            is given with a factory, or the factory does not give an ``nn.Module``.
        ImportError: if a module or attribute named cannot be imported.
        TypeError: if ``checkpoint_class`` has no ``load_from_checkpoint``.
    """
    path = Path(target)
    if path.is_dir():
        raise FileNotFoundError(
            f"Expected CHECKPOINT_OR_FACTORY to be a checkpoint file, but {target!r} is a "
            "directory. Pass the .ckpt file inside it."
        )
    if path.is_file():
        return _load_checkpoint(path, checkpoint_class or DEFAULT_CHECKPOINT_CLASS)
    if _OBJECT_SPEC.fullmatch(target):
        if checkpoint_class is not None:
            raise ValueError(
                f"--module applies to checkpoints only, but {target!r} is a factory; drop --module "
                "or pass a checkpoint file."
            )
        return _load_factory(target), None
    if path.suffix or "/" in target or "\\" in target:
        raise FileNotFoundError(f"No checkpoint file at {target!r}.")
    raise ValueError(
        "Expected CHECKPOINT_OR_FACTORY to be a Lightning checkpoint file or a "
        f"'package.module:callable' factory, but {target!r} is neither (no such file, and not "
        "of the form package.module:callable)."
    )


def _load_checkpoint(path: Path, class_spec: str) -> tuple[nn.Module, int | None]:
    cls = load_object(class_spec, "--module")
    if not callable(getattr(cls, "load_from_checkpoint", None)):
        raise TypeError(
            f"Expected --module {class_spec!r} to be a LightningModule class with "
            f"`load_from_checkpoint`, but {cls!r} has none."
        )
    try:
        step = checkpoint_step(read_checkpoint(path))
        model = cls.load_from_checkpoint(path, map_location="cpu")
    except Exception as err:
        raise ValueError(
            f"Could not load the checkpoint {str(path)!r} with {class_spec}.load_from_checkpoint: "
            f"{type(err).__name__}: {err}. Pass the LightningModule class that saved it with "
            "--module package.module:ClassName."
        ) from err
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"Expected --module {class_spec!r} to load an nn.Module from the checkpoint, but it "
            f"gave a {type(model).__name__}. Pass the LightningModule class that saved it."
        )
    return model.eval(), step


def _load_factory(spec: str) -> nn.Module:
    factory = load_object(spec, "CHECKPOINT_OR_FACTORY")
    model = factory if isinstance(factory, nn.Module) else None
    if model is None:
        if not callable(factory):
            raise ValueError(
                f"Expected {spec!r} to name a callable that returns an nn.Module, but it is a "
                f"{type(factory).__name__}."
            )
        model = factory()
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"Expected the factory {spec!r} to return an nn.Module, but it returned a "
            f"{type(model).__name__}."
        )
    return model.eval()


def load_segmenter(spec: str) -> Any:
    """The segmenter named on the command line: ``"toy"`` or a ``package.module:factory``.

    Args:
        spec: ``"toy"`` for the shipped toy-world segmenter
            (:func:`~gan_dissect_callbacks.demos.segmenter.load_toy_segmenter`), or a factory
            called without arguments that returns a
            :class:`~gan_dissect_callbacks.segmenters.base.Segmenter` (or a segmenter itself).

    Raises:
        ValueError, ImportError: see :func:`load_object`.
        TypeError: if the result does not implement the segmenter protocol.

    Example:
        >>> load_segmenter("toy").vocabulary.names[:3]
        ('sky', 'ground', 'sun')
    """
    from gan_dissect_callbacks.segmenters.base import Segmenter

    if spec == "toy":
        from gan_dissect_callbacks.demos.segmenter import load_toy_segmenter

        return load_toy_segmenter()
    found = load_object(spec, "--segmenter")
    # A class passes the runtime protocol check (it has the members), so classes are called too.
    if isinstance(found, type) or (callable(found) and not isinstance(found, Segmenter)):
        found = found()
    if not isinstance(found, Segmenter):
        members = ("vocabulary", "segment", "soft_segment", "segmentation_size")
        missing = [m for m in members if not hasattr(found, m)]
        raise TypeError(
            f"Expected --segmenter {spec!r} to give a segmenter ({', '.join(members)}), but "
            f"got a {type(found).__name__} that lacks {', '.join(missing)}."
        )
    return found


def _move_segmenter(segmenter: Any, device: torch.device) -> None:
    module = getattr(segmenter, "module", None)
    if isinstance(module, nn.Module):
        module.to(device)
    elif callable(getattr(segmenter, "to", None)):
        segmenter.to(device)


def _int_at_least(low: int, option: str) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(
                f"Expected argument `{option}` to be an int ≥ {low}, but got {text!r}."
            )
        return value

    return parse


def _fraction(option: str, *, closed_low: bool) -> Any:
    interval = "[0, 1)" if closed_low else "(0, 1)"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        inside = (0.0 <= value < 1.0) if closed_low else (0.0 < value < 1.0)
        if not inside:
            raise argparse.ArgumentTypeError(
                f"Expected argument `{option}` to be a float in {interval}, but got {text!r}."
            )
        return value

    return parse


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
    parser.add_argument("--rule", choices=("quantile", "iqr"), default="quantile")
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
    from gan_dissect_callbacks.reporting.dissection_logging import summarise

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
    from gan_dissect_callbacks.engines.sampling import resolve_latent_sampler
    from gan_dissect_callbacks.instrumentation import resolve_layer

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
        for name in args.layers:
            resolve_layer(model, name)
        try:
            sampler = resolve_latent_sampler(model, None, args.latent_dim)
        except ValueError as err:
            raise ValueError(f"{err} On the command line: --latent-dim N.") from err
    except (FileNotFoundError, ImportError, TypeError, ValueError) as err:
        parser.error(str(err))
    model.to(device)
    _move_segmenter(segmenter, device)
    step = args.step if args.step is not None else (saved_step or 0)

    try:
        report = dissect(
            model,
            args.layers,
            segmenter,
            sample_latents=sampler,
            num_samples=args.num_samples,
            batch_size=args.batch_size,
            seed=args.seed,
            rule=args.rule,
            quantile=args.quantile,
            iou_cutoff=args.iou_cutoff,
            top_k=args.top_k,
            progress=_Progress(sys.stderr),
            step=step,
        )
    except (TypeError, ValueError) as err:
        print(f"gan-dissect: error: the dissection failed: {err}", file=sys.stderr)
        return 1
    _write(args, model, report, sampler)
    return 0


def _write(args: argparse.Namespace, model: nn.Module, report: Any, sampler: Any) -> None:
    from torch.utils.tensorboard import SummaryWriter

    from gan_dissect_callbacks.reporting.dissection_logging import (
        log_dissection,
        summarise,
        unit_galleries,
    )

    out = Path(args.out)
    folder = out / "dissection"
    summary = summarise(report, _previous_summary(folder / "latest.json", report))
    step_file = folder / f"step_{report.step:07d}.json"
    report.to_json(step_file)
    report.to_json(folder / "latest.json")
    galleries = unit_galleries(
        model,
        report,
        sampler=sampler,
        generate=model,
        batch_size=args.batch_size,
        num_units=args.gallery_units if args.top_k else 0,
    )
    writer = SummaryWriter(log_dir=str(out))
    try:
        log_dissection(writer, report, summary, galleries=galleries, write_layout=True)
    finally:
        writer.close()
    print(report.summary())
    print(f"\nreport:      {step_file}")
    print(f"tensorboard: tensorboard --logdir {out} --samples_per_plugin images=100")


if __name__ == "__main__":
    sys.exit(main())
