"""The pictures of an intervention: the same samples as drawn, ablated, and inserted."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from gan_dissect_callbacks.arguments import check_int, check_unit_indices
from gan_dissect_callbacks.engines.generator import (
    AnalysedGenerator,
    GeneratorLike,
    featuremap_shape,
)
from gan_dissect_callbacks.engines.intervention._prepared import check_locations, check_values
from gan_dissect_callbacks.instrumentation import UnitEdit

__all__ = ["intervention_images"]


def intervention_images(
    generator: GeneratorLike,
    layer: str,
    units: Sequence[int] | Tensor,
    values: float | Sequence[float] | Tensor,
    *,
    insert_where: Tensor | None = None,
    num_images: int = 8,
    seed: int = 0,
) -> dict[str, Tensor]:
    """The same seeded samples original, with ``units`` ablated everywhere, and inserted.

    Args:
        generator: the generator under analysis (an
            :class:`~gan_dissect_callbacks.engines.generator.AnalysedGenerator`, or a module
            whose layers are named, e.g. a LightningModule).
        layer: dotted name of a layer with ``[B, U, h, w]`` output.
        units: the units to ablate and insert.
        values: their insertion values k (one per listed unit, or one for all).
        insert_where: where to insert, ``[h, w]``; ``None``: every pixel.
        num_images: samples drawn.
        seed: seed of the latents.

    Returns:
        ``{"original", "ablated", "inserted"}`` images ``[num_images, C, H, W]`` on the CPU.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Unflatten(1, (3, 2, 2)), nn.Tanh())
        >>> net.latent_dim = 12
        >>> shots = intervention_images(net, "0", [0], 3.0, num_images=2)
        >>> shots["ablated"][:, 0].abs().max().item()  # unit 0 off: channel 0 is tanh(0)
        0.0
        >>> round(shots["inserted"][0, 0, 0, 0].item(), 4)  # unit 0 set to 3: tanh(3)
        0.9951
    """
    num_images = check_int(num_images, "num_images")
    g = AnalysedGenerator.wrap(generator)
    g.resolve_layer(layer)
    with g.harmless():
        z = g.latents(num_images, seed)
        original, acts = g.run(z, capture=[layer])
        num_units, h, w = featuremap_shape(layer, acts[layer])
        index = check_unit_indices(units, num_units)
        k = check_values(values, index.numel(), "values").float().tolist()
        where = None
        if insert_where is not None:
            where = check_locations(insert_where, (h, w))[0]
        ablated = g.images(z, {layer: UnitEdit.ablation(index, num_units)})
        inserted = g.images(z, {layer: UnitEdit.insertion(index, k, num_units, where=where)})
    return {
        "original": original.detach().float().cpu(),
        "ablated": ablated.detach().float().cpu(),
        "inserted": inserted.detach().float().cpu(),
    }
