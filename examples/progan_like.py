"""A paper-scale, ProGAN-like generator, dissected by this package (random or your own weights).

The generator has the layer structure of Progressive GAN (Karras et al., 2018) that the GAN
Dissection paper dissects, under the paper's names: normalised latents → ``layer1`` (dense to a
4×4 featuremap) and ``layer2`` (3×3 conv at 4×4), then two 3×3 convs per resolution, each
resolution double the last (nearest-neighbour upsampling before the first conv), so at 256 px:

=========  ==========  =====
layers     resolution  units
=========  ==========  =====
1, 2       4×4         512
3, 4       8×8         512
5, 6       16×16       512
7, 8       32×32       512
9, 10      64×64       256
11, 12     128×128     128
13, 14     256×256     64
=========  ==========  =====

Every conv uses the equalised learning rate (weights drawn from N(0, 1), scaled by He's constant
at run time), is followed by LeakyReLU(0.2) and pixel-wise feature normalisation; ``output`` is a
1×1 conv to RGB, clipped to ``[-1, 1]`` as ProGAN's images are when saved. A unit of
``generator.layer4`` is one of the 512 channels of the 8×8 featuremap.

The module is a small LightningModule (:class:`ProGANLike`) with ``sample_latents``, which is all
the callbacks need. Attaching dissection to its training is::

    model = ProGANLike(resolution=32, max_channels=64)
    segmenter = random_ade20k_segmenter("module", output_size=32)
    callback = DissectionCallback(["generator.layer4", "generator.layer6"], segmenter,
                                  every_n_train_steps=500, num_samples=256)
    pl.Trainer(max_steps=2 * batches, callbacks=[callback], logger=TensorBoardLogger("runs"))

No scene segmenter can be downloaded here, so the segmenters are the 150-concept ADE20K
vocabulary on randomly initialised networks (a small conv net, or the SegFormer-B0 architecture
when transformers is installed): their labels mean nothing, but their shapes and costs are those
of a real dissection. Put a real one in their place with
:meth:`~gan_dissect_callbacks.segmenters.transformers.TransformersSegmenter.from_pretrained`.

Run::

    # the engine once on CPU: 512-unit layer4 of the 256-px generator, 150 concepts, 32 samples;
    # prints the time and the peak memory
    python examples/progan_like.py --dissect
    # your own generator weights (a state dict of ProGANLikeGenerator, or a Lightning checkpoint)
    python examples/progan_like.py --dissect --weights generator.pt
    # train a reduced config on the toy scenes with DissectionCallback attached; then
    # tensorboard --logdir runs/progan_like
    python examples/progan_like.py --train --resolution 32 --max-channels 64 --batches 200
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gan_dissect_callbacks.engines.dissection import DissectionReport, dissect
from gan_dissect_callbacks.segmenters.ade20k import ADE20K_NAMES, ADE20K_VOCABULARY
from gan_dissect_callbacks.segmenters.module import ModuleSegmenter
from gan_dissect_callbacks.segmenters.torchvision import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "EqualizedConv2d",
    "PixelNorm",
    "ProGANLike",
    "ProGANLikeDiscriminator",
    "ProGANLikeGenerator",
    "load_generator_weights",
    "main",
    "random_ade20k_segmenter",
    "run_dissection",
]


class PixelNorm(nn.Module):
    """Normalise each pixel's feature vector to unit root mean square over channels."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class EqualizedConv2d(nn.Module):
    """A conv whose weights are stored as N(0, 1) and scaled by ``gain / sqrt(fan_in)`` when used.

    Progressive GAN's *equalised learning rate*: every weight gets the same effective step size
    under Adam, whatever its layer's fan-in.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, gain: float = math.sqrt(2)
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.scale = gain / math.sqrt(in_channels * kernel_size * kernel_size)
        self.padding = kernel_size // 2

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)


class _LatentTo4x4(nn.Module):
    """ProGAN's first layer: a dense map from the latent to a 4×4 featuremap (equalised lr)."""

    def __init__(self, latent_dim: int, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.weight = nn.Parameter(torch.randn(channels * 16, latent_dim))
        self.bias = nn.Parameter(torch.zeros(channels))
        # ProGAN's gain for this layer: sqrt(2) / 4 over fan-in, i.e. He's constant per 4×4 cell.
        self.scale = math.sqrt(2) / 4 / math.sqrt(latent_dim)

    def forward(self, z: Tensor) -> Tensor:
        x = F.linear(z, self.weight * self.scale).view(-1, self.channels, 4, 4)
        return x + self.bias.view(1, -1, 1, 1)


def _block(conv: nn.Module, upsample: bool = False) -> nn.Sequential:
    parts: list[nn.Module] = [nn.Upsample(scale_factor=2.0, mode="nearest")] if upsample else []
    return nn.Sequential(*parts, conv, nn.LeakyReLU(0.2), PixelNorm())


def _check_resolution(resolution: int) -> int:
    if not isinstance(resolution, int) or resolution not in {2**k for k in range(3, 11)}:
        raise ValueError(
            f"Expected argument `resolution` to be a power of two from 8 to 1024, but got "
            f"{resolution!r}."
        )
    return resolution


class ProGANLikeGenerator(nn.Module):
    """Progressive GAN's generator structure with layers ``layer1`` … ``layer{2·log2(res) - 2}``.

    Args:
        latent_dim: size of the latent ``z`` (normalised to unit RMS before ``layer1``).
        resolution: output side, a power of two from 8 to 1024 (14 layers at 256 px).
        max_channels: most units per layer (512 in the paper).
        fmap_base: units at resolution ``r`` are ``min(2·fmap_base / r, max_channels)``; the
            default 8192 gives 512 units up to 32×32, then 256, 128, 64.

    Raises:
        ValueError: if an argument is out of range.

    Example:
        >>> g = ProGANLikeGenerator(latent_dim=16, resolution=16, max_channels=8)
        >>> [name for name, _ in g.named_children()]
        ['normalize_latent', 'layer1', 'layer2', 'layer3', 'layer4', 'layer5', 'layer6', 'output']
        >>> tuple(g(torch.zeros(2, 16)).shape)
        (2, 3, 16, 16)
    """

    def __init__(
        self,
        latent_dim: int = 512,
        resolution: int = 256,
        max_channels: int = 512,
        fmap_base: int = 8192,
    ) -> None:
        super().__init__()
        _check_resolution(resolution)
        for name, value in (
            ("latent_dim", latent_dim),
            ("max_channels", max_channels),
            ("fmap_base", fmap_base),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Expected argument `{name}` to be an int ≥ 1, but got {value!r}.")
        self.latent_dim = latent_dim
        self.resolution = resolution
        self.normalize_latent = PixelNorm()

        def units(r: int) -> int:
            return max(1, min(2 * fmap_base // r, max_channels))

        self.layer1 = _block(_LatentTo4x4(latent_dim, units(4)))
        self.layer2 = _block(EqualizedConv2d(units(4), units(4), 3))
        index, previous, r = 3, units(4), 8
        while r <= resolution:
            self.add_module(f"layer{index}", _block(EqualizedConv2d(previous, units(r), 3), True))
            self.add_module(f"layer{index + 1}", _block(EqualizedConv2d(units(r), units(r), 3)))
            index, previous, r = index + 2, units(r), 2 * r
        self.num_layers = index - 1
        self.output = EqualizedConv2d(previous, 3, 1, gain=1.0)

    def layer_shapes(self) -> dict[str, tuple[int, int]]:
        """``{"layerN": (units, side)}`` of every named layer."""
        shapes = {}
        for i in range(1, self.num_layers + 1):
            side = 4 * 2 ** ((i - 1) // 2)
            conv = next(m for m in getattr(self, f"layer{i}") if not isinstance(m, nn.Upsample))
            units = conv.channels if isinstance(conv, _LatentTo4x4) else conv.weight.shape[0]
            shapes[f"layer{i}"] = (int(units), side)
        return shapes

    def forward(self, z: Tensor) -> Tensor:
        """Latents ``[B, latent_dim]`` → images ``[B, 3, res, res]`` in ``[-1, 1]``."""
        x = self.normalize_latent(z)
        for i in range(1, self.num_layers + 1):
            x = getattr(self, f"layer{i}")(x)
        return self.output(x).clamp(-1, 1)


class ProGANLikeDiscriminator(nn.Module):
    """A compact mirror of the generator (only for the ``--train`` demo): image → one logit."""

    def __init__(self, resolution: int = 32, channels: int = 64) -> None:
        super().__init__()
        _check_resolution(resolution)
        layers: list[nn.Module] = [EqualizedConv2d(3, channels, 1), nn.LeakyReLU(0.2)]
        r = resolution
        while r > 4:
            layers += [EqualizedConv2d(channels, channels, 3), nn.LeakyReLU(0.2), nn.AvgPool2d(2)]
            r //= 2
        layers += [nn.Flatten(), nn.Linear(channels * 16, 1)]
        self.main = nn.Sequential(*layers)

    def forward(self, images: Tensor) -> Tensor:
        return self.main(images).flatten()


class ProGANLike(pl.LightningModule):
    """The ProGAN-like generator as a LightningModule: ``generator.layer4`` etc. are dissectable.

    Training (non-saturating GAN loss, manual optimisation, two optimizers) exists so that
    callbacks can be attached in a real ``Trainer``; at paper scale it is far too slow for a CPU.

    Args:
        latent_dim: see :class:`ProGANLikeGenerator`.
        resolution: see :class:`ProGANLikeGenerator`.
        max_channels: see :class:`ProGANLikeGenerator`.
        fmap_base: see :class:`ProGANLikeGenerator`.
        discriminator_channels: width of the demo discriminator.
        lr: Adam learning rate of both networks.
        seed: seed of the random initial weights.
    """

    def __init__(
        self,
        latent_dim: int = 512,
        resolution: int = 256,
        max_channels: int = 512,
        fmap_base: int = 8192,
        discriminator_channels: int = 64,
        lr: float = 1e-3,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.latent_dim = latent_dim
        with torch.random.fork_rng():  # seeded weights, global RNG untouched
            torch.manual_seed(seed)
            self.generator = ProGANLikeGenerator(latent_dim, resolution, max_channels, fmap_base)
            self.discriminator = ProGANLikeDiscriminator(resolution, discriminator_channels)

    def sample_latents(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` latents ``z ~ N(0, I)`` on the module's device, seeded by ``generator``."""
        return torch.randn(n, self.latent_dim, generator=generator).to(self.device)

    def forward(self, z: Tensor) -> Tensor:
        return self.generator(z)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        real = batch[0] if isinstance(batch, list | tuple) else batch
        g_opt, d_opt = self.optimizers()  # type: ignore[attr-defined]
        fake = self.generator(torch.randn(real.shape[0], self.latent_dim, device=self.device))
        d_loss = (
            F.softplus(-self.discriminator(real)).mean()
            + F.softplus(self.discriminator(fake.detach())).mean()
        )
        d_opt.zero_grad()
        self.manual_backward(d_loss)
        d_opt.step()
        g_loss = F.softplus(-self.discriminator(fake)).mean()
        g_opt.zero_grad()
        self.manual_backward(g_loss)
        g_opt.step()
        self.log_dict({"loss/generator": g_loss.detach(), "loss/discriminator": d_loss.detach()})

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        lr = self.hparams["lr"]
        return [
            torch.optim.Adam(self.generator.parameters(), lr=lr, betas=(0.0, 0.99)),
            torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=(0.0, 0.99)),
        ]


def load_generator_weights(generator: ProGANLikeGenerator, path: str | Path) -> None:
    """Load user weights into ``generator``: its own state dict, or a Lightning checkpoint.

    In a checkpoint (or any dict with a ``"state_dict"``) the keys under ``generator.`` are used.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the weights do not fit the generator's configuration.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Expected `--weights` to be a weights file, but {path} is none.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if any(k.startswith("generator.") for k in state):
        state = {k[len("generator.") :]: v for k, v in state.items() if k.startswith("generator.")}
    try:
        generator.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(
            f"Expected weights of a ProGANLikeGenerator at resolution {generator.resolution} "
            f"with these --max-channels/--latent-dim, but {path} does not fit: {err}"
        ) from err


def random_ade20k_segmenter(
    kind: str = "module", *, output_size: int = 128, seed: int = 0
) -> ModuleSegmenter:
    """A segmenter over the 150 ADE20K concepts with random weights (nothing downloads).

    Args:
        kind: ``"module"``: a small conv net (logits at a quarter of the input resolution) in a
            :class:`~gan_dissect_callbacks.segmenters.module.ModuleSegmenter`; ``"segformer"``:
            the SegFormer-B0 architecture in a
            :class:`~gan_dissect_callbacks.segmenters.transformers.TransformersSegmenter`
            (needs transformers). Both read logits exclusively (softmax, argmax), as ADE20K
            models do, on ImageNet-normalised input.
        output_size: side of the masks the segmenter returns (see :func:`main`'s
            ``--segmentation-size``).
        seed: seed of the random weights.

    Raises:
        ValueError: for an unknown ``kind``.
        ImportError: for ``"segformer"`` without transformers.
    """
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if kind == "module":
            net = nn.Sequential(
                nn.Conv2d(3, 32, 4, stride=4),
                nn.ReLU(),
                nn.Conv2d(32, 64, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(64, len(ADE20K_VOCABULARY), 1),
            )
            mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
            std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
            return ModuleSegmenter(
                net,
                ADE20K_VOCABULARY,
                multilabel=False,
                input_transform=lambda x: ((x + 1) / 2 - mean.to(x)) / std.to(x),
                output_size=output_size,
            )
        if kind == "segformer":
            import transformers

            from gan_dissect_callbacks.segmenters.transformers import TransformersSegmenter

            id2label = dict(enumerate(ADE20K_NAMES))
            # The mit-b0 encoder with its decode head (num_labels etc. pass through to the base).
            config = transformers.SegformerConfig(  # type: ignore[call-arg]
                hidden_sizes=[32, 64, 160, 256],
                num_attention_heads=[1, 2, 5, 8],
                decoder_hidden_size=256,
                num_labels=len(id2label),
                id2label=id2label,
                label2id={name: i for i, name in id2label.items()},
            )
            model = transformers.SegformerForSemanticSegmentation(config)
            return TransformersSegmenter(model, output_size=output_size)
    raise ValueError(f"Expected argument `kind` to be 'module' or 'segformer', but got {kind!r}.")


def _peak_memory_mib() -> float:
    """Peak resident memory of this process so far (``ru_maxrss``), in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, else KiB


def run_dissection(
    model: ProGANLike,
    layers: Sequence[str],
    segmenter: Any,
    *,
    num_samples: int = 32,
    batch_size: int = 8,
    seed: int = 0,
) -> tuple[DissectionReport, float, float]:
    """Run the engine once; returns ``(report, seconds, peak memory of the process in MiB)``."""
    start = time.perf_counter()
    report = dissect(
        model,
        [f"generator.{name}" for name in layers],
        segmenter,
        num_samples=num_samples,
        batch_size=batch_size,
        seed=seed,
        progress=lambda done, total: print(f"dissecting {done}/{total} samples", file=sys.stderr),
    )
    return report, time.perf_counter() - start, _peak_memory_mib()


@torch.no_grad()
def time_forward(
    model: ProGANLike, segmenter: Any, *, num_samples: int = 32, batch_size: int = 8, seed: int = 0
) -> float:
    """Seconds to generate and segment the samples a dissection sees: its unavoidable cost."""
    from gan_dissect_callbacks.engines.sampling import iterate_samples

    start = time.perf_counter()
    for batch in iterate_samples(model.sample_latents, num_samples, batch_size, seed=seed):
        segmenter.segment(model(batch.latents))
    return time.perf_counter() - start


def _train(args: argparse.Namespace, model: ProGANLike, segmenter: Any) -> None:
    from lightning.pytorch.loggers import TensorBoardLogger

    from gan_dissect_callbacks.callbacks.dissection import DissectionCallback
    from gan_dissect_callbacks.demos.train import SceneDataModule

    callback = DissectionCallback(
        [f"generator.{name}" for name in args.layers],
        segmenter,
        every_n_train_steps=args.dissect_every,
        on_train_start=True,  # the untrained baseline, step 0
        num_samples=args.num_samples,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    trainer = pl.Trainer(
        max_steps=2 * args.batches,  # two optimizer steps per batch (see the step axis docs)
        callbacks=[callback],
        logger=TensorBoardLogger(args.log_dir, name="progan_like"),
        enable_checkpointing=False,
        log_every_n_steps=1,
        accelerator="cpu" if args.device == "cpu" else "auto",
    )
    data = SceneDataModule(num_scenes=64 * args.batches, image_size=args.resolution, batch_size=16)
    trainer.fit(model, datamodule=data)
    for entry in callback.history:
        print(
            f"step {entry['step']}: "
            + ", ".join(
                f"{layer} {numbers['total']} interpretable"
                for layer, numbers in entry["layers"].items()
            )
        )
    print(f"TensorBoard logs: {trainer.log_dir}")


def build_parser() -> argparse.ArgumentParser:
    """Arguments of this example."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--dissect", action="store_true", help="run the engine once, report costs")
    mode.add_argument("--train", action="store_true", help="train with DissectionCallback")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--max-channels", type=int, default=512)
    parser.add_argument("--latent-dim", type=int, default=512)
    parser.add_argument("--weights", help="generator weights: a state dict or a Lightning ckpt")
    parser.add_argument("--layers", nargs="+", default=["layer4"], help="default: layer4")
    parser.add_argument(
        "--segmenter", choices=("module", "segformer"), default="module", help="random ADE20K"
    )
    parser.add_argument(
        "--segmentation-size",
        type=int,
        default=128,
        help="side of the concept masks; unit activations are upsampled to it (default 128)",
    )
    parser.add_argument("--num-samples", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="--dissect: first time generator + segmenter alone on the same samples",
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", type=int, default=200, help="--train: training batches")
    parser.add_argument("--dissect-every", type=int, default=100, help="--train: cadence")
    parser.add_argument("--log-dir", default="runs", help="--train: TensorBoard folder")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Build the generator and segmenter, then dissect once (``--dissect``) or train."""
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = ProGANLike(args.latent_dim, args.resolution, args.max_channels, seed=args.seed)
    if args.weights:
        load_generator_weights(model.generator, args.weights)
    segmenter = random_ade20k_segmenter(args.segmenter, output_size=args.segmentation_size)
    model.to(args.device)
    segmenter.module.to(args.device)
    if args.train:
        _train(args, model, segmenter)
        return 0
    shapes = model.generator.layer_shapes()
    forward = None
    if args.baseline:
        model.eval()
        forward = time_forward(
            model, segmenter, num_samples=args.num_samples, batch_size=args.batch_size
        )
    before = _peak_memory_mib()
    report, seconds, peak = run_dissection(
        model,
        args.layers,
        segmenter,
        num_samples=args.num_samples,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    from gan_dissect_callbacks.metrics.unit_concept_iou import UnitConceptIoU

    print(report.summary())
    present = sum(f > 0 for f in report.concept_fraction)
    print(f"concepts present in the masks: {present} of {len(report.concept_fraction)}")
    for name in args.layers:
        units, side = shapes[name]
        state = UnitConceptIoU(units, len(segmenter.vocabulary)).state_nbytes
        print(
            f"{name}: {units} units at {side}x{side} -> {args.segmentation_size}x"
            f"{args.segmentation_size} masks of {len(segmenter.vocabulary)} concepts; "
            f"metric state {state / 2**20:.1f} MiB"
        )
    print(
        f"{args.num_samples} samples of {args.resolution} px in batches of {args.batch_size}: "
        f"{seconds:.1f} s ({args.num_samples / seconds:.2f} samples/s) on {args.device} with "
        f"{torch.get_num_threads()} threads; peak memory {peak:.0f} MiB "
        f"({before:.0f} MiB before the dissection)"
    )
    if forward is not None:
        print(
            f"generator + segmenter alone on the same samples: {forward:.1f} s; the analysis "
            f"adds {seconds - forward:.1f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
