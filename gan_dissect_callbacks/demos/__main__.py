"""The toy world's command line: ``python -m gan_dissect_callbacks.demos COMMAND``.

Commands: ``train`` (the demo), ``summary`` (the numbers of a run), ``train-segmenter``,
``evaluate-segmenter``, ``figure``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from gan_dissect_callbacks.arguments import SEGMENTER_PRECISIONS, SegmenterPrecision


def _train(args: argparse.Namespace) -> None:
    from gan_dissect_callbacks.demos.train import train_scene_gan

    callbacks = []
    if args.dissect:
        from gan_dissect_callbacks.demos.train import default_callbacks

        callbacks = default_callbacks(every_n_batches=args.dissect_every)
    model, trainer = train_scene_gan(
        args.batches,
        batch_size=args.batch_size,
        log_dir=args.log_dir,
        name=args.name,
        seed=args.seed,
        callbacks=callbacks,
        accelerator=args.accelerator,
    )
    if args.save_weights:
        from gan_dissect_callbacks.demos.pretrained import save_scene_gan_weights

        save_scene_gan_weights(model, args.save_weights)
        print(f"saved {args.save_weights}")
    log_dir = trainer.logger.log_dir if trainer.logger is not None else args.log_dir
    # Lightning's "max_steps reached" above counts optimizer steps: two per batch.
    print(f"\nTrained {trainer.fit_loop.total_batch_idx + 1} batches.")
    print(f"TensorBoard logs: {log_dir}")
    print(
        f"Open them with:  tensorboard --logdir {args.log_dir} --samples_per_plugin images=1000"
        "  (then http://localhost:6006)"
    )
    if args.dissect:
        print(f"The numbers:     python -m gan_dissect_callbacks.demos summary {log_dir}")


def _summary(args: argparse.Namespace) -> None:
    from gan_dissect_callbacks.demos.summary import format_summary, summarize_run

    summary = summarize_run(args.run)
    print(json.dumps(summary, indent=1) if args.json else format_summary(summary))


def _train_segmenter(args: argparse.Namespace) -> None:
    from gan_dissect_callbacks.demos.segmenter import (
        evaluate_segmenter,
        save_toy_segmenter_net,
        train_toy_segmenter,
    )

    net = train_toy_segmenter(
        args.steps, batch_size=args.batch_size, width=args.width, seed=args.seed
    )
    save_toy_segmenter_net(net, args.out)
    print(f"saved {args.out}")
    _print_iou(evaluate_segmenter(_segment_with(args.out)))


def _segment_with(path: str | None, precision: SegmenterPrecision = "32-true"):  # type: ignore[no-untyped-def]
    from gan_dissect_callbacks.demos.segmenter import load_toy_segmenter

    return load_toy_segmenter(path, precision).segment


def _print_iou(result: dict[str, float]) -> None:
    print(json.dumps({k: round(v, 4) for k, v in result.items()}, indent=1))


def _evaluate_segmenter(args: argparse.Namespace) -> None:
    from gan_dissect_callbacks.demos.segmenter import evaluate_segmenter

    _print_iou(
        evaluate_segmenter(
            _segment_with(args.weights, args.precision),
            num_scenes=args.num_scenes,
            degraded=args.degraded,
        )
    )


def _figure(args: argparse.Namespace) -> None:
    from gan_dissect_callbacks.demos.figures import toy_world_figure

    print(f"saved {toy_world_figure(args.out)}")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m gan_dissect_callbacks.demos``."""
    parser = argparse.ArgumentParser(prog="python -m gan_dissect_callbacks.demos")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train the toy GAN with TensorBoard logging")
    train.add_argument("--batches", type=int, default=2500, help="training batches (default 2500)")
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--log-dir", default="runs", help="TensorBoard root folder (default runs)")
    train.add_argument("--name", default="scenes", help="run name under the log dir")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument(
        "--no-dissect", dest="dissect", action="store_false", help="train without the callbacks"
    )
    train.add_argument(
        "--dissect-every",
        type=int,
        default=500,
        help="analyse every N batches (default 500)",
    )
    train.add_argument("--accelerator", default="cpu", help="Lightning accelerator (default cpu)")
    train.add_argument("--save-weights", default=None, help="save the trained GAN to this file")
    train.set_defaults(func=_train)

    summary = sub.add_parser(
        "summary", help="print a run's numbers from its analysis reports and SWD scalars"
    )
    summary.add_argument("run", help="the run's log folder, e.g. runs/scenes/version_0")
    summary.add_argument("--json", action="store_true", help="print them as JSON")
    summary.set_defaults(func=_summary)

    seg = sub.add_parser("train-segmenter", help="train the toy segmenter and save its weights")
    seg.add_argument("--steps", type=int, default=2000)
    seg.add_argument("--batch-size", type=int, default=32)
    seg.add_argument("--width", type=int, default=16)
    seg.add_argument("--seed", type=int, default=0)
    seg.add_argument("--out", default=str(Path("toy_segmenter_32.pt")))
    seg.set_defaults(func=_train_segmenter)

    ev = sub.add_parser("evaluate-segmenter", help="IoU per concept on held-out scenes")
    ev.add_argument("--weights", default=None, help="weights file (default: the shipped one)")
    ev.add_argument("--num-scenes", type=int, default=2000)
    ev.add_argument("--degraded", action="store_true", help="blur/noise the scenes first")
    ev.add_argument(
        "--precision",
        default="32-true",
        choices=SEGMENTER_PRECISIONS,
        help="what the net computes in (default 32-true)",
    )
    ev.set_defaults(func=_evaluate_segmenter)

    fig = sub.add_parser("figure", help="draw real/generated scenes and concept maps to a PNG")
    fig.add_argument("--out", default="docs/images/toy_world.png")
    fig.set_defaults(func=_figure)

    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main(sys.argv[1:])
