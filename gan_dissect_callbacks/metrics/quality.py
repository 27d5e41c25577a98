"""Image-quality signals for the artifact-unit search: discriminator score and FID.

Two global quality metrics besides the sliced Wasserstein distance
(:class:`~gan_dissect_callbacks.metrics.swd.SlicedWassersteinDistance`):

- :class:`DiscriminatorScore`: the mean output of the GAN's own discriminator on generated images,
  a free in-training signal (its scale drifts as the discriminator trains, so compare values
  measured with the same discriminator only).
- :func:`make_fid`: torchmetrics' :class:`~torchmetrics.image.fid.FrechetInceptionDistance` built
  around a feature extractor the user supplies, since Inception weights cannot be downloaded
  everywhere; nothing here downloads anything.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.image.fid import FrechetInceptionDistance

from gan_dissect_callbacks.arguments import check_int
from gan_dissect_callbacks.instrumentation import eval_mode

__all__ = ["DiscriminatorScore", "make_fid"]


class DiscriminatorScore(Metric):
    """Mean discriminator output over generated images.

    Each image's score is the mean of the discriminator's outputs for it (one logit, or a map of
    them for a patch discriminator), optionally passed through a sigmoid first; the result is the
    mean over all images seen. States are a float64 sum and an int64 count, reduced with ``"sum"``,
    so the value is exact across batches and processes. Memory: two scalars.

    ``higher_is_better`` is left unset: a higher score means the discriminator is fooled more, but
    the discriminator changes while it trains, so only values measured with the same
    discriminator are comparable.

    Args:
        apply_sigmoid: apply a sigmoid to every output before averaging (logits → probabilities).
        kwargs: forwarded to :class:`torchmetrics.Metric`.

    Example:
        >>> metric = DiscriminatorScore()
        >>> metric.update(torch.tensor([0.0, 2.0]))
        >>> metric.update(torch.tensor([[1.0], [-1.0]]))
        >>> metric.compute()
        tensor(0.5000)
        >>> metric = DiscriminatorScore(apply_sigmoid=True)
        >>> metric.update(torch.tensor([0.0, 0.0]))
        >>> metric.compute()
        tensor(0.5000)
    """

    is_differentiable = False
    full_state_update = False

    score_sum: Tensor
    num_images: Tensor

    def __init__(self, apply_sigmoid: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(apply_sigmoid, bool):
            raise ValueError(
                f"Expected argument `apply_sigmoid` to be a bool, but got {apply_sigmoid!r}."
            )
        self.apply_sigmoid = apply_sigmoid
        self.add_state("score_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_images", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, scores: Tensor) -> None:
        """Add the discriminator's outputs for a batch of generated images.

        Args:
            scores: float tensor ``[B]`` or ``[B, ...]`` (e.g. ``[B, 1]``, or ``[B, 1, h, w]`` for a
                patch discriminator), ``B >= 1``, finite.
        """
        if not isinstance(scores, Tensor) or not scores.is_floating_point():
            what = (
                f"a {scores.dtype} tensor" if isinstance(scores, Tensor) else type(scores).__name__
            )
            raise TypeError(f"Expected argument `scores` to be a float tensor, but got {what}.")
        if scores.ndim == 0 or scores.numel() == 0:
            raise ValueError(
                "Expected argument `scores` to have shape [B] or [B, ...] with at least one value"
                f" per image, but got {list(scores.shape)}."
            )
        if not bool(torch.isfinite(scores).all()):
            raise ValueError(
                "Expected argument `scores` to hold only finite values, but got NaN/Inf."
            )
        values = scores.detach().double()
        if self.apply_sigmoid:
            values = values.sigmoid()
        self.score_sum += values.reshape(values.shape[0], -1).mean(dim=1).sum()
        self.num_images += values.shape[0]

    def compute(self) -> Tensor:
        """Mean score over all images seen (float32 scalar)."""
        if int(self.num_images) == 0:
            raise RuntimeError(
                "Expected at least one score before `compute`, but got none. Call"
                " `update(discriminator(fake_images))` first."
            )
        return (self.score_sum / self.num_images).float()


class _SignedImageFeatures(nn.Module):
    """Adapts a feature extractor for images in [0, 1] to FID updates with images in [-1, 1].

    The extractor runs in eval mode without gradients and its own train/eval mode (which may be
    shared with a discriminator being trained) is restored afterwards; ``train()`` on this wrapper
    does not reach it, so attaching the FID metric to a LightningModule never changes it.
    """

    def __init__(self, extractor: nn.Module, num_features: int) -> None:
        super().__init__()
        self.extractor = extractor
        self.num_features = num_features

    def train(self, mode: bool = True) -> _SignedImageFeatures:
        return self

    def forward(self, images: Tensor) -> Tensor:
        if not isinstance(images, Tensor) or not images.is_floating_point() or images.ndim != 4:
            what = (
                f"a {images.dtype} tensor of shape {list(images.shape)}"
                if isinstance(images, Tensor)
                else type(images).__name__
            )
            raise ValueError(
                f"Expected argument `imgs` to be a float tensor [B, C, H, W], but got {what}."
            )
        if not bool(torch.isfinite(images).all()):
            raise ValueError(
                "Expected argument `imgs` to hold only finite values, but got NaN/Inf."
            )
        if images.numel() and (images.min() < -1 or images.max() > 1):
            raise ValueError(
                "Expected argument `imgs` to have values in [-1, 1], but got values in"
                f" [{images.min().item():.4g}, {images.max().item():.4g}]."
            )
        with eval_mode(self.extractor), torch.no_grad():
            features = self.extractor((images + 1) / 2)
        if not isinstance(features, Tensor) or tuple(features.shape) != (
            images.shape[0],
            self.num_features,
        ):
            shape = (
                list(features.shape) if isinstance(features, Tensor) else type(features).__name__
            )
            raise ValueError(
                "Expected argument `feature_extractor` to return features of shape"
                f" [B, num_features] = {[images.shape[0], self.num_features]}, but got {shape}."
            )
        return features


def make_fid(
    feature_extractor: nn.Module,
    num_features: int | None = None,
    input_img_size: tuple[int, int, int] = (3, 32, 32),
    **kwargs: Any,
) -> FrechetInceptionDistance:
    """torchmetrics' FID computed on the features of a user-supplied network.

    The returned metric is a plain :class:`~torchmetrics.image.fid.FrechetInceptionDistance`:
    ``update(images, real=...)`` takes float images in ``[-1, 1]`` (the GAN convention), which are
    mapped to ``[0, 1]`` before they reach ``feature_extractor``; ``compute()`` returns the
    distance. The extractor runs in eval mode without gradients, and its previous mode is restored
    after every update, so a discriminator trunk can serve as the extractor. Its parameters become
    part of the metric (and of a LightningModule holding it): keep them out of optimizers you
    build from ``self.parameters()``. Nothing is downloaded, and neither ``torch-fidelity`` nor
    ``scipy`` is needed.

    Args:
        feature_extractor: module mapping ``[B, C, H, W]`` images in ``[0, 1]`` to ``[B, d]``.
        num_features: ``d``. If ``None``, found by one forward pass on a zero image of
            ``input_img_size`` (no random numbers are drawn).
        input_img_size: ``(C, H, W)`` of the probe image; only used when ``num_features`` is None.
        kwargs: forwarded to ``FrechetInceptionDistance`` (e.g. ``reset_real_features=False``) and
            from there to :class:`torchmetrics.Metric`; ``feature`` and ``normalize`` are set here.

    Returns:
        The configured FID metric.

    Example:
        >>> extractor = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        >>> fid = make_fid(extractor)
        >>> fid.inception.num_features
        4
        >>> images = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
        >>> fid.update(images, real=True)
        >>> fid.update(images, real=False)
        >>> bool(fid.compute().abs() < 1e-3)
        True
    """
    if not isinstance(feature_extractor, nn.Module):
        raise TypeError(
            "Expected argument `feature_extractor` to be a torch.nn.Module, but got"
            f" {type(feature_extractor).__name__}."
        )
    taken = sorted({"feature", "normalize"} & set(kwargs))
    if taken:
        raise ValueError(
            f"Expected no {taken} in the keyword arguments (make_fid sets them), but got them."
        )
    if num_features is None:
        if (
            not isinstance(input_img_size, tuple)
            or len(input_img_size) != 3
            or not all(isinstance(n, int) and n > 0 for n in input_img_size)
        ):
            raise ValueError(
                "Expected argument `input_img_size` to be a tuple (C, H, W) of positive ints, but"
                f" got {input_img_size!r}."
            )
        parameter = next(feature_extractor.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        probe = torch.zeros(1, *input_img_size, device=device)
        with eval_mode(feature_extractor), torch.no_grad():
            output = feature_extractor(probe)
        if not isinstance(output, Tensor) or output.ndim != 2 or output.shape[0] != 1:
            shape = list(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise ValueError(
                "Expected argument `feature_extractor` to return features of shape [B, d], but got"
                f" {shape} for a probe batch of shape {list(probe.shape)}."
            )
        num_features = int(output.shape[1])
    num_features = check_int(num_features, "num_features")
    wrapped = _SignedImageFeatures(feature_extractor, num_features)
    return FrechetInceptionDistance(feature=wrapped, normalize=True, **kwargs)
