"""Pictures of the toy world for the docs: scenes, concept maps, generated samples.

``python -m gan_dissect_callbacks.demos figure --out docs/images/toy_world.png`` draws four rows:
real scenes, their ground-truth concept maps, generated scenes (the shipped toy GAN) and the toy
segmenter's concept maps of them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from gan_dissect_callbacks.demos.scenes import SCENE_VOCABULARY, render_scenes
from gan_dissect_callbacks.reporting.images import image_grid

__all__ = ["CONCEPT_COLOURS", "concept_map", "toy_world_figure"]

#: A distinct colour per concept for concept maps (RGB in [0, 1]).
CONCEPT_COLOURS: dict[str, tuple[float, float, float]] = {
    "sky": (0.55, 0.75, 1.0),
    "ground": (0.55, 0.45, 0.3),
    "sun": (1.0, 0.85, 0.0),
    "cloud": (0.85, 0.85, 0.85),
    "tree": (0.1, 0.5, 0.1),
    "house": (0.6, 0.2, 0.2),
    "roof": (0.35, 0.0, 0.35),
    "window": (1.0, 1.0, 0.5),
    "door": (0.35, 0.2, 0.05),
    "trunk": (0.5, 0.3, 0.1),
    "crown": (0.2, 0.8, 0.2),
    "grass": (0.45, 0.75, 0.3),
    "water": (0.0, 0.3, 0.9),
    "brick": (0.85, 0.35, 0.25),
}


def concept_map(masks: Tensor) -> Tensor:
    """Colour each pixel by its most specific concept (part, then material, then object).

    Args:
        masks: bool ``[N, 14, H, W]`` in :data:`SCENE_VOCABULARY` order.

    Returns:
        ``[N, 3, H, W]`` in ``[-1, 1]`` (black where no concept).

    Example:
        >>> m = torch.zeros(1, 14, 2, 2, dtype=torch.bool)
        >>> m[0, SCENE_VOCABULARY.index("sky")] = True
        >>> m[0, SCENE_VOCABULARY.index("sun"), 0, 0] = True
        >>> concept_map(m)[0, :, 0, 0].tolist() == concept_map(m)[0, :, 1, 1].tolist()
        False
    """
    n, _, h, w = masks.shape
    out = torch.zeros(n, 3, h, w)
    order = [
        c for cat in ("object", "material", "part") for c in SCENE_VOCABULARY if c.category == cat
    ]
    for concept in order:  # later (more specific) categories paint over earlier ones
        m = masks[:, SCENE_VOCABULARY.index(concept.name)].unsqueeze(1)
        colour = torch.tensor(CONCEPT_COLOURS[concept.name]).view(1, 3, 1, 1)
        out = torch.where(m, colour.expand_as(out), out)
    return out * 2 - 1


@torch.no_grad()
def toy_world_figure(path: str | Path, n: int = 8, seed: int = 3) -> Path:
    """Write the four-row picture of the toy world to ``path`` (PNG, upscaled ×4)."""
    from PIL import Image

    from gan_dissect_callbacks.demos.pretrained import load_pretrained_scene_gan
    from gan_dissect_callbacks.demos.segmenter import load_toy_segmenter

    generator = torch.Generator().manual_seed(seed)
    real, real_masks = render_scenes(n, 32, generator=generator)
    gan = load_pretrained_scene_gan()
    fake = gan(gan.sample_latents(n, generator=generator))
    fake_masks = load_toy_segmenter().segment(fake)
    rows = torch.cat([real, concept_map(real_masks), fake, concept_map(fake_masks)])
    grid = image_grid(rows, nrow=n, padding=1)
    pixels = (grid.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    image = Image.fromarray(pixels)
    image = image.resize((image.width * 4, image.height * 4), Image.Resampling.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
