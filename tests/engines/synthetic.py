"""A synthetic generator whose units draw known concepts, and its exact segmenter.

``PaintingGenerator`` maps a latent to random rectangles, one per concept, on an 8×8 grid. Layer
``features`` has ``num_concepts + extra`` units: unit ``c`` is concept ``c``'s indicator (times a
positive random gain, so values are distinct) and the extra units are noise. The image encodes the
concepts in its channels, nearest-upsampled to 32×32, so ``exact_segmenter`` reads them back
exactly. Dissection must therefore label unit ``c`` with concept ``c``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gan_dissect_callbacks.segmenters.base import GroundTruthSegmenter
from gan_dissect_callbacks.segmenters.vocabulary import ConceptVocabulary

VOCABULARY = ConceptVocabulary.from_pairs(
    [("red", "object"), ("green", "part"), ("blue", "material")]
)


class Features(nn.Module):
    def __init__(self, extra: int) -> None:
        super().__init__()
        self.extra = extra

    def forward(self, z: Tensor) -> Tensor:
        b = z.shape[0]
        grid = torch.arange(8, device=z.device, dtype=z.dtype)
        masks = []
        for c in range(3):
            # Rectangle bounds from the latent: deterministic functions of z.
            y0 = (torch.sigmoid(z[:, 4 * c]) * 5).floor()
            x0 = (torch.sigmoid(z[:, 4 * c + 1]) * 5).floor()
            h = 1 + (torch.sigmoid(z[:, 4 * c + 2]) * 3).floor()
            w = 1 + (torch.sigmoid(z[:, 4 * c + 3]) * 3).floor()
            ys = (grid.view(1, 8, 1) >= y0.view(b, 1, 1)) & (
                grid.view(1, 8, 1) < (y0 + h).view(b, 1, 1)
            )
            xs = (grid.view(1, 1, 8) >= x0.view(b, 1, 1)) & (
                grid.view(1, 1, 8) < (x0 + w).view(b, 1, 1)
            )
            masks.append(ys & xs)
        m = torch.stack(masks, 1).to(z.dtype)  # [B, 3, 8, 8]
        gain = 1 + torch.sigmoid(z[:, 12:15]).view(b, 3, 1, 1)
        noise = torch.sin(
            z[:, 15:16].view(b, 1, 1, 1) * 7 + grid.view(1, 1, 8, 1) * 1.3 + grid.view(1, 1, 1, 8)
        )
        extra = noise.expand(b, self.extra, 8, 8) * torch.arange(
            1, self.extra + 1, device=z.device
        ).view(1, -1, 1, 1)
        return torch.cat([m * gain, extra], 1)


class PaintingGenerator(nn.Module):
    latent_dim = 16

    def __init__(self, extra: int = 2) -> None:
        super().__init__()
        self.features = Features(extra)
        self.scale = nn.BatchNorm2d(3 + extra)  # a BatchNorm whose statistics must stay untouched

    def forward(self, z: Tensor) -> Tensor:
        r = self.features(z)
        _ = self.scale(r)
        present = (r[:, :3] > 0).to(z.dtype)
        return nn.functional.interpolate(present, scale_factor=4.0, mode="nearest") * 2 - 1


def exact_segmenter() -> GroundTruthSegmenter:
    return GroundTruthSegmenter(VOCABULARY, lambda images: images > 0)
