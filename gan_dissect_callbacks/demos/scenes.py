"""Procedural outdoor scenes with exact, hierarchical ground-truth concept masks.

The toy world of the project: landscapes with sky, sun, clouds, ground, a lake, trees and a
house, rendered in batched tensor code from a seeded :class:`torch.Generator`. Every pixel gets
exactly one *object* (the front-most thing drawn there), at most one *part* of that object and at
most one *material*, so the masks obey a real hierarchy:

* parts lie inside their object: ``roof``, ``window`` and ``door`` inside ``house``; ``trunk``
  and ``crown`` inside ``tree``;
* materials lie on their object: ``brick`` is the house wall (house minus roof, windows, door),
  ``grass`` and ``water`` split the visible ``ground``;
* objects never overlap and cover the image.

Images are float ``[N, 3, S, S]`` in ``[-1, 1]``; masks are bool ``[N, 14, S, S]`` in the channel
order of :data:`SCENE_VOCABULARY`.

Example:
    >>> import torch
    >>> images, masks = render_scenes(4, size=32, generator=torch.Generator().manual_seed(0))
    >>> tuple(images.shape), tuple(masks.shape), masks.dtype
    ((4, 3, 32, 32), (4, 14, 32, 32), torch.bool)
    >>> bool(images.min() >= -1 and images.max() <= 1)
    True
    >>> objects = masks[:, [SCENE_VOCABULARY.index(n) for n in OBJECTS]]
    >>> bool((objects.sum(dim=1) == 1).all())  # every pixel has exactly one object
    True
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gan_dissect_callbacks.segmenters.vocabulary import ConceptVocabulary

__all__ = [
    "MATERIALS",
    "OBJECTS",
    "PARTS",
    "PART_OF",
    "SCENE_VOCABULARY",
    "render_scenes",
]

OBJECTS: tuple[str, ...] = ("sky", "ground", "sun", "cloud", "tree", "house")
PARTS: tuple[str, ...] = ("roof", "window", "door", "trunk", "crown")
MATERIALS: tuple[str, ...] = ("grass", "water", "brick")

#: The vocabulary of the toy world, in mask channel order.
SCENE_VOCABULARY = ConceptVocabulary.from_pairs(
    [(n, "object") for n in OBJECTS]
    + [(n, "part") for n in PARTS]
    + [(n, "material") for n in MATERIALS]
)

#: Which object each part and material lies on (the hierarchy the masks obey).
PART_OF: dict[str, str] = {
    "roof": "house",
    "window": "house",
    "door": "house",
    "brick": "house",
    "trunk": "tree",
    "crown": "tree",
    "grass": "ground",
    "water": "ground",
}

# Base colours in [0, 1] RGB; each scene jitters them so units see colour variety.
_COLOURS: dict[str, tuple[float, float, float]] = {
    "sky": (0.45, 0.65, 0.95),
    "sun": (1.00, 0.90, 0.30),
    "cloud": (0.95, 0.95, 0.97),
    "grass": (0.30, 0.65, 0.25),
    "water": (0.15, 0.35, 0.75),
    "trunk": (0.45, 0.28, 0.12),
    "crown": (0.10, 0.45, 0.15),
    "brick": (0.70, 0.30, 0.22),
    "roof": (0.35, 0.20, 0.20),
    "window": (0.85, 0.90, 0.60),
    "door": (0.30, 0.18, 0.08),
}


def _uniform(n: int, low: float, high: float, g: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(n, 1, 1, generator=g)


def _bernoulli(n: int, p: float, g: torch.Generator) -> Tensor:
    return torch.rand(n, 1, 1, generator=g) < p


def _colour(name: str, n: int, g: torch.Generator, jitter: float = 0.12) -> Tensor:
    """Per-scene colour ``[n, 3, 1, 1]`` around the concept's base colour."""
    base = torch.tensor(_COLOURS[name]).view(1, 3, 1, 1)
    shift = (torch.rand(n, 3, 1, 1, generator=g) - 0.5) * 2 * jitter
    brightness = (torch.rand(n, 1, 1, 1, generator=g) - 0.5) * jitter
    return (base + shift + brightness).clamp(0, 1)


def render_scenes(
    num_scenes: int,
    size: int = 32,
    *,
    generator: torch.Generator | None = None,
    noise: float = 0.03,
) -> tuple[Tensor, Tensor]:
    """Render ``num_scenes`` random landscapes and their exact concept masks.

    Args:
        num_scenes: number of scenes (≥ 1).
        size: image side in pixels (≥ 16); shapes scale with it.
        generator: the random source; the same seed gives the same scenes.
        noise: standard deviation of per-pixel colour noise (in [0, 1] units).

    Returns:
        ``(images, masks)``: float ``[N, 3, size, size]`` in ``[-1, 1]`` and bool
        ``[N, len(SCENE_VOCABULARY), size, size]``.

    Raises:
        ValueError: if ``num_scenes < 1`` or ``size < 16``.
    """
    if not isinstance(num_scenes, int) or num_scenes < 1:
        raise ValueError(
            f"Expected argument `num_scenes` to be an int ≥ 1, but got {num_scenes!r}."
        )
    if not isinstance(size, int) or size < 16:
        raise ValueError(f"Expected argument `size` to be an int ≥ 16, but got {size!r}.")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    n = num_scenes
    # Pixel-centre coordinates in [0, 1]: y grows downwards.
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    y = coords.view(1, size, 1).expand(n, size, size)
    x = coords.view(1, 1, size).expand(n, size, size)

    index = {name: i for i, name in enumerate(SCENE_VOCABULARY.names)}
    none = -1
    # int8 ids (-1: none): the vocabulary is small, and these are full-size tensors.
    obj = torch.full((n, size, size), none, dtype=torch.int8)
    part = torch.full((n, size, size), none, dtype=torch.int8)
    mat = torch.full((n, size, size), none, dtype=torch.int8)

    def paint(shape: Tensor, obj_name: str, part_name: str | None, mat_name: str | None) -> None:
        """Draw ``shape`` in front of what is there: it takes the object, part and material."""
        obj[shape] = index[obj_name]
        part[shape] = index[part_name] if part_name else none
        mat[shape] = index[mat_name] if mat_name else none

    # Sky and ground split at a random horizon.
    horizon = _uniform(n, 0.45, 0.68, g)
    paint(y < horizon, "sky", None, None)
    paint(y >= horizon, "ground", None, "grass")

    # The sun: a disc high in the sky.
    has_sun = _bernoulli(n, 0.6, g)
    sun_x, sun_y = _uniform(n, 0.1, 0.9, g), _uniform(n, 0.08, 0.25, g)
    sun_r = _uniform(n, 0.06, 0.10, g)
    paint(has_sun & ((x - sun_x) ** 2 + (y - sun_y) ** 2 < sun_r**2), "sun", None, None)

    # Up to two clouds: wide ellipses that may cover the sun.
    for _ in range(2):
        has = _bernoulli(n, 0.5, g)
        cx, cy = _uniform(n, 0.0, 1.0, g), _uniform(n, 0.1, 0.3, g)
        rx, ry = _uniform(n, 0.12, 0.22, g), _uniform(n, 0.04, 0.07, g)
        inside = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 < 1
        paint(has & inside & (y < horizon), "cloud", None, None)

    # A lake in the ground.
    has_lake = _bernoulli(n, 0.5, g)
    lx, ly = _uniform(n, 0.2, 0.8, g), horizon + _uniform(n, 0.12, 0.25, g)
    lrx, lry = _uniform(n, 0.18, 0.32, g), _uniform(n, 0.05, 0.09, g)
    lake = has_lake & (((x - lx) / lrx) ** 2 + ((y - ly) / lry) ** 2 < 1) & (y >= horizon)
    paint(lake, "ground", None, "water")

    # Up to two trees standing on the ground, drawn behind the house.
    for _ in range(2):
        has = _bernoulli(n, 0.55, g)
        tx = _uniform(n, 0.08, 0.92, g)
        base = horizon + _uniform(n, 0.05, 0.2, g)
        trunk_h, trunk_w = _uniform(n, 0.12, 0.2, g), _uniform(n, 0.03, 0.05, g)
        crown_r = _uniform(n, 0.09, 0.15, g)
        trunk_top = base - trunk_h
        trunk = has & ((x - tx).abs() < trunk_w / 2) & (y < base) & (y >= trunk_top)
        crown = has & ((x - tx) ** 2 + ((y - (trunk_top - crown_r * 0.6)) * 1.1) ** 2 < crown_r**2)
        paint(trunk, "tree", "trunk", None)
        paint(crown, "tree", "crown", None)

    # A house: brick wall, a triangular roof, one or two windows and a door.
    has_house = _bernoulli(n, 0.8, g)
    hx = _uniform(n, 0.25, 0.75, g)
    width, height = _uniform(n, 0.28, 0.42, g), _uniform(n, 0.18, 0.28, g)
    base = horizon + _uniform(n, 0.1, 0.22, g)
    left, right, top = hx - width / 2, hx + width / 2, base - height
    wall = has_house & (x >= left) & (x < right) & (y >= top) & (y < base)
    roof_h = _uniform(n, 0.1, 0.16, g)
    overhang = 0.03
    # Triangle: above the wall, narrowing linearly to the apex.
    half = (width / 2 + overhang) * (y - (top - roof_h)) / roof_h
    roof = has_house & (y < top) & (y >= top - roof_h) & ((x - hx).abs() < half)
    door_w, door_h = width * 0.22, height * 0.55
    door_x = hx + (_uniform(n, -0.25, 0.25, g)) * width
    door = wall & ((x - door_x).abs() < door_w / 2) & (y >= base - door_h)
    win = torch.zeros_like(wall)
    for side in (-1.0, 1.0):
        has = _bernoulli(n, 0.8, g) if side > 0 else torch.ones(n, 1, 1, dtype=torch.bool)
        wx = hx + side * width * 0.28
        wy = top + height * 0.35
        ws = torch.maximum(width * 0.18, torch.full_like(width, 2.2 / size))
        win |= has & wall & ((x - wx).abs() < ws / 2) & ((y - wy).abs() < ws / 2)
    win &= ~door
    paint(roof, "house", "roof", None)
    paint(wall, "house", None, "brick")
    paint(win, "house", "window", None)
    paint(door, "house", "door", None)

    # Compared straight into bool masks: a one-hot of int64 ids would hold 8·C bytes per pixel.
    concepts = torch.arange(len(SCENE_VOCABULARY)).view(1, -1, 1, 1)
    masks = torch.zeros(n, len(SCENE_VOCABULARY), size, size, dtype=torch.bool)
    for ids in (obj, part, mat):
        masks |= ids.unsqueeze(1) == concepts
    images = _shade(masks, x, y, horizon, g, noise)
    return images, masks


def _shade(
    masks: Tensor, x: Tensor, y: Tensor, horizon: Tensor, g: torch.Generator, noise: float
) -> Tensor:
    """Colour the scene from its masks, with gradients and textures so concepts look distinct."""
    n, _, size, _ = masks.shape
    image = torch.zeros(n, 3, size, size)

    def paint(name: str, colour: Tensor) -> None:
        # The colour regions partition the image (see the hierarchy), so each pixel gets one
        # colour; painting each region as soon as its colour is drawn keeps one full-size
        # colour tensor alive at a time.
        image.add_(masks[:, SCENE_VOCABULARY.index(name)].unsqueeze(1) * colour)

    # Sky: lighter towards the horizon.
    paint("sky", _colour("sky", n, g) * (0.85 + 0.3 * (y / horizon).clamp(0, 1).unsqueeze(1)))
    # Grass: darker near the viewer, with a speckle texture.
    speckle = torch.rand(n, 1, size, size, generator=g) * 0.15
    paint("grass", _colour("grass", n, g) * (1.1 - 0.4 * y.unsqueeze(1)) + speckle - 0.07)
    del speckle
    # Water: horizontal ripples.
    ripple = 0.08 * torch.sin(y.unsqueeze(1) * size * math.pi * 0.9)
    paint("water", _colour("water", n, g) + ripple)
    del ripple
    # Brick: mortar lines every few pixels.
    period = max(size // 10, 2)
    rows = torch.arange(size).view(1, 1, size, 1)
    mortar = (rows % period == 0).float() * 0.25
    paint("brick", _colour("brick", n, g) * (1 - mortar) + mortar * 0.6)
    paint("crown", _colour("crown", n, g) * (0.8 + 0.4 * torch.rand(n, 1, size, size, generator=g)))
    paint("sun", _colour("sun", n, g, 0.05))
    paint("cloud", _colour("cloud", n, g, 0.04))
    for name in ("trunk", "roof", "window", "door"):
        paint(name, _colour(name, n, g))
    image = image + noise * torch.randn(image.shape, generator=g)
    return (image.clamp(0, 1) * 2 - 1).contiguous()
