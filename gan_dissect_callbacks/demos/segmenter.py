"""The toy world's segmenter: a small U-Net trained on rendered scenes by this package's code.

The weights ship with the package (``demos/weights/toy_segmenter_32.pt``, float16, ~1 MB) and
are reproduced by ``python -m gan_dissect_callbacks.demos train-segmenter`` (seeded). It is
multi-label: one sigmoid per concept of
:data:`~gan_dissect_callbacks.demos.scenes.SCENE_VOCABULARY`, so a window pixel can be both
``window`` and ``house``. It is trained on scenes degraded by blur, noise and colour jitter so
that it also reads the blurrier images a GAN draws.

Its accuracy on held-out scenes (IoU per concept, ratio of sums over 2,000 scenes) is measured by
:func:`evaluate_segmenter` and reported in ``docs/toy_world.md``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gan_dissect_callbacks.arguments import SegmenterPrecision
from gan_dissect_callbacks.demos.scenes import SCENE_VOCABULARY, render_scenes
from gan_dissect_callbacks.segmenters.module import ModuleSegmenter

__all__ = [
    "ToySegmenter",
    "ToySegmenterNet",
    "degrade",
    "evaluate_segmenter",
    "load_toy_segmenter",
    "load_toy_segmenter_net",
    "train_toy_segmenter",
]

WEIGHTS_FILE = "toy_segmenter_32.pt"


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    )


class ToySegmenterNet(nn.Module):
    """A three-scale U-Net: images ``[B, 3, H, W]`` in ``[-1, 1]`` → logits ``[B, C, H, W]``.

    In eval mode it runs an inference path: each BatchNorm folded into its conv, channels-last,
    and each decoder's first conv run on its two inputs apart instead of on their concatenation
    (the logits of the modules run one by one, up to float rounding; its held-out IoU is the
    same).

    Example:
        >>> net = ToySegmenterNet(width=4)
        >>> tuple(net(torch.zeros(2, 3, 32, 32)).shape)
        (2, 14, 32, 32)
    """

    def __init__(self, num_concepts: int = len(SCENE_VOCABULARY), width: int = 32) -> None:
        super().__init__()
        self.enc1 = _block(3, width)
        self.enc2 = _block(width, 2 * width)
        self.enc3 = _block(2 * width, 4 * width)
        self.dec2 = _block(6 * width, 2 * width)
        self.dec1 = _block(3 * width, width)
        self.head = nn.Conv2d(width, num_concepts, 1)

    def forward(self, images: Tensor) -> Tensor:
        if self.training:
            e1 = self.enc1(images)
            e2 = self.enc2(F.max_pool2d(e1, 2))
            e3 = self.enc3(F.max_pool2d(e2, 2))
            d2 = self.dec2(torch.cat([_upsampled(e3), e2], 1))
            d1 = self.dec1(torch.cat([_upsampled(d2), e1], 1))
            return self.head(d1)
        # Inference reads BatchNorm's running statistics, so each one folds into the conv
        # before it; channels-last runs the pooling and resizing of this small net ~1.5x faster
        # on CPU; and a decoder's first conv, being linear in its input, runs on the upsampled
        # features and the skip connection apart and adds the two, which saves concatenating
        # them (in channels-last a slow copy: ~1/8 of the float32 forward on a CPU). The logits
        # differ only by float rounding.
        images = images.contiguous(memory_format=torch.channels_last)
        e1 = _folded(self.enc1)(images)
        e2 = _folded(self.enc2)(F.max_pool2d(e1, 2))
        e3 = _folded(self.enc3)(F.max_pool2d(e2, 2))
        d2 = _folded(self.dec2)(_upsampled(e3), e2)
        d1 = _folded(self.dec1)(_upsampled(d2), e1)
        return self.head(d1).contiguous()


def _upsampled(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="bilinear")


def _folded(block: nn.Sequential) -> Callable[..., Tensor]:
    """``block`` in eval mode with each BatchNorm folded into its conv: ``relu(conv'(x))``.

    Called with several inputs, it runs as on their concatenation along channels: the first
    conv is the sum of its parts' convs on each input.

    The fold is recomputed at every call (a few small tensors), so it always reads the current
    weights and running statistics, and gradients still reach the images and the weights.
    """
    layers: list[tuple[Tensor, Tensor]] = []
    for conv, norm in ((block[0], block[1]), (block[3], block[4])):
        assert isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d)
        assert norm.running_mean is not None and norm.running_var is not None
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        layers.append(
            (conv.weight * scale.view(-1, 1, 1, 1), norm.bias - norm.running_mean * scale)
        )

    def run(*inputs: Tensor) -> Tensor:
        (weight, bias), second = layers
        parts = weight.split([x.shape[1] for x in inputs], dim=1)
        # The last input's conv carries the bias; the others are added into it in place.
        x = F.conv2d(inputs[-1], parts[-1], bias, padding=1)
        for part, extra in zip(parts[:-1], inputs[:-1], strict=True):
            x = x.add_(F.conv2d(extra, part, padding=1))
        x = F.relu_(x)
        return F.relu_(F.conv2d(x, *second, padding=1))

    return run


def degrade(images: Tensor, generator: torch.Generator) -> Tensor:
    """Blur, add noise and jitter colours of a batch, as a GAN's imperfect images would be.

    Example:
        >>> x = torch.zeros(2, 3, 8, 8)
        >>> y = degrade(x, torch.Generator().manual_seed(0))
        >>> tuple(y.shape), bool(y.abs().max() <= 1)
        ((2, 3, 8, 8), True)
    """
    n = images.shape[0]
    # Gaussian blur with a per-image sigma in [0, 1.2], as a 5-tap separable kernel.
    sigma = 1.2 * torch.rand(n, 1, generator=generator) + 1e-3
    taps = torch.arange(-2, 3, dtype=images.dtype).view(1, 5)
    kernel = torch.exp(-(taps**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # [n, 5]
    x = images.reshape(1, n * 3, *images.shape[2:])
    k = kernel.repeat_interleave(3, dim=0)
    x = F.conv2d(F.pad(x, (2, 2, 0, 0), mode="replicate"), k.view(n * 3, 1, 1, 5), groups=n * 3)
    x = F.conv2d(F.pad(x, (0, 0, 2, 2), mode="replicate"), k.view(n * 3, 1, 5, 1), groups=n * 3)
    x = x.view_as(images)
    contrast = 1 + 0.3 * (torch.rand(n, 1, 1, 1, generator=generator) - 0.5)
    shift = 0.2 * (torch.rand(n, 3, 1, 1, generator=generator) - 0.5)
    amount = 0.12 * torch.rand(n, 1, 1, 1, generator=generator)
    x = x * contrast + shift + amount * torch.randn(x.shape, generator=generator)
    return x.clamp(-1, 1)


def _soft_dice_loss(logits: Tensor, targets: Tensor) -> Tensor:
    p = torch.sigmoid(logits)
    inter = (p * targets).sum(dim=(0, 2, 3))
    denom = p.sum(dim=(0, 2, 3)) + targets.sum(dim=(0, 2, 3))
    return (1 - (2 * inter + 1) / (denom + 1)).mean()


def train_toy_segmenter(
    steps: int = 1500,
    *,
    batch_size: int = 64,
    image_size: int = 32,
    width: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    log: Callable[[str], None] | None = print,
) -> ToySegmenterNet:
    """Train :class:`ToySegmenterNet` on freshly rendered, degraded scenes (seeded).

    Each step renders a new batch, so the net never sees a scene twice. The loss is binary
    cross-entropy plus a soft Dice term, which keeps small concepts (windows, doors) learnt.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    net = ToySegmenterNet(width=width)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    net.train()
    start = time.time()
    for step in range(steps):
        images, masks = render_scenes(batch_size, image_size, generator=generator)
        # Half the batch degraded, half clean: the net must read both.
        half = batch_size // 2
        images = torch.cat([degrade(images[:half], generator), images[half:]])
        logits = net(images)
        targets = masks.float()
        loss = F.binary_cross_entropy_with_logits(logits, targets) + _soft_dice_loss(
            logits, targets
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if log is not None and (step % 100 == 0 or step == steps - 1):
            log(f"step {step:5d}  loss {loss.item():.4f}  {time.time() - start:.0f}s")
    return net.eval()


@torch.no_grad()
def evaluate_segmenter(
    segment: Callable[[Tensor], Tensor],
    *,
    num_scenes: int = 2000,
    image_size: int = 32,
    seed: int = 12345,
    degraded: bool = False,
    batch_size: int = 250,
) -> dict[str, float]:
    """IoU per concept of ``segment`` (images → bool masks) on held-out rendered scenes.

    IoU is a ratio of sums over all scenes. The default seed differs from every training seed
    used by this package, so these scenes are held out.

    Returns:
        ``{concept name: IoU}`` plus ``"mean"``, the average over concepts.
    """
    generator = torch.Generator().manual_seed(seed)
    inter = torch.zeros(len(SCENE_VOCABULARY), dtype=torch.long)
    union = torch.zeros(len(SCENE_VOCABULARY), dtype=torch.long)
    done = 0
    while done < num_scenes:
        n = min(batch_size, num_scenes - done)
        images, masks = render_scenes(n, image_size, generator=generator)
        if degraded:
            images = degrade(images, generator)
        predicted = segment(images)
        inter += (predicted & masks).sum(dim=(0, 2, 3))
        union += (predicted | masks).sum(dim=(0, 2, 3))
        done += n
    iou = inter.double() / union.clamp(min=1).double()
    result = {name: float(v) for name, v in zip(SCENE_VOCABULARY.names, iou, strict=True)}
    result["mean"] = float(iou.mean())
    return result


def _weights_path() -> Path:
    return Path(str(resources.files("gan_dissect_callbacks.demos"))) / "weights" / WEIGHTS_FILE


def save_toy_segmenter_net(net: ToySegmenterNet, path: str | Path) -> None:
    """Save ``net`` as a float16 state dict (half the size; accuracy is measured after loading)."""
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in net.state_dict().items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"width": net.enc1[0].out_channels, "state_dict": state}, path)


def load_toy_segmenter_net(path: str | Path | None = None) -> ToySegmenterNet:
    """Load the shipped (or a given) toy segmenter network, in eval mode.

    Raises:
        FileNotFoundError: if the weights file is missing, naming the command that makes it.
    """
    path = Path(path) if path is not None else _weights_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"No toy segmenter weights at {path}. Create them with "
            "`python -m gan_dissect_callbacks.demos train-segmenter`."
        )
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    net = ToySegmenterNet(width=int(checkpoint["width"]))
    net.load_state_dict({k: v.float() for k, v in checkpoint["state_dict"].items()})
    return net.eval()


class ToySegmenter(ModuleSegmenter):
    """The toy segmenter as a class: multi-label masks over :data:`SCENE_VOCABULARY`.

    A config that names a class builds it (``class_path:
    gan_dissect_callbacks.demos.segmenter.ToySegmenter`` in a LightningCLI YAML); in code,
    :func:`load_toy_segmenter` returns one.

    By default it runs in bfloat16 where the device computes it natively (``precision="auto"``,
    see :class:`~gan_dissect_callbacks.segmenters.module.ModuleSegmenter`): ~2.5x faster on a
    CPU with AVX512-BF16, with the same held-out IoU as float32 to three decimals
    (``docs/toy_world.md``).

    Args:
        path: a weights file written by :func:`save_toy_segmenter_net`; ``None``: the shipped
            weights.
        precision: what the net computes in: ``"auto"``, ``"32-true"``, ``"bf16-mixed"`` or
            ``"16-mixed"``.

    Raises:
        FileNotFoundError: if the weights file is missing, naming the command that makes it.

    Example:
        >>> segmenter = ToySegmenter()
        >>> segmenter.vocabulary == SCENE_VOCABULARY, segmenter.multilabel
        (True, True)
        >>> segmenter.segmentation_size((32, 32)), segmenter.precision
        ((32, 32), 'auto')
    """

    def __init__(
        self, path: str | Path | None = None, precision: SegmenterPrecision = "auto"
    ) -> None:
        super().__init__(
            load_toy_segmenter_net(path), SCENE_VOCABULARY, multilabel=True, precision=precision
        )


def load_toy_segmenter(
    path: str | Path | None = None, precision: SegmenterPrecision = "auto"
) -> ModuleSegmenter:
    """The toy segmenter behind the :class:`~gan_dissect_callbacks.segmenters.base.Segmenter`
    protocol: multi-label masks over :data:`SCENE_VOCABULARY` at image resolution.

    Args:
        path: a weights file; ``None``: the shipped weights.
        precision: what the net computes in (see :class:`ToySegmenter`).

    Returns:
        A :class:`ToySegmenter`.
    """
    return ToySegmenter(path, precision)
