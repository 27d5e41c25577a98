"""The continuous intervention: optimise a degree of edit α per unit, and rank the units by it."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from gan_dissect_callbacks.arguments import (
    MEASURES,
    Measure,
    check_choice,
    check_float,
    check_int,
)
from gan_dissect_callbacks.engines.generator import GeneratorLike
from gan_dissect_callbacks.engines.intervention._prepared import (
    check_values,
    prepared,
    region_means,
    twice,
)
from gan_dissect_callbacks.engines.intervention.results import AlphaResult, AlphaStep
from gan_dissect_callbacks.engines.intervention.values import unit_values
from gan_dissect_callbacks.instrumentation import UnitEdit
from gan_dissect_callbacks.segmenters.base import Segmenter

__all__ = ["optimize_alpha"]


def optimize_alpha(
    generator: GeneratorLike,
    layer: str,
    segmenter: Segmenter,
    concept: str,
    *,
    init: Sequence[float] | Tensor | None = None,
    values: Sequence[float] | Tensor | None = None,
    locations: Tensor | None = None,
    lam: float = 0.005,
    lr: float = 0.01,
    steps: int = 200,
    batch_size: int = 16,
    seed: int = 0,
    measure: Measure = "region",
    value_samples: int = 64,
    progress: Callable[[AlphaStep, int], None] | None = None,
) -> AlphaResult:
    """The continuous intervention: ``α* = argmin_α (−δ_α + λ‖α‖₂)``, α clamped to ``[0, 1]``.

    With ``x'_a = f((1 − α) ⊙ r_U,P, r_Ū,P)`` and ``x'_i = f(α ⊙ k + (1 − α) ⊙ r_U,P, r_Ū,P)``,
    ``δ_α = E_z,P[s_c(x'_i)] − E_z,P[s_c(x'_a)]`` is measured on the segmenter's *soft* output
    inside the edited region P↑. Each step draws ``batch_size`` fresh seeded latents and one
    location per latent, takes the gradient with ``torch.autograd.grad`` with respect to α only
    (no ``.grad`` is left on the model or the segmenter), takes an Adam step and clamps α to
    ``[0, 1]``.

    Args:
        generator: the generator under analysis (an
            :class:`~gan_dissect_callbacks.engines.generator.AnalysedGenerator`, or a module
            whose layers are named, e.g. a LightningModule).
        layer: dotted name of a layer with ``[B, U, h, w]`` output.
        segmenter: gives soft concept scores, differentiable with respect to the images.
        concept: the concept, a name of the segmenter's vocabulary.
        init: a score per unit, e.g. the units' IoU with the concept (:func:`iou_scores`);
            α starts at ``init / max(init)``. ``None``: α starts at 0.5 everywhere.
        values: k per unit ``[U]``; by default the concept-weighted mean activation.
        locations: candidate P ``[L, h, w]`` or ``[h, w]``; ``None``: every pixel.
        lam: λ, the weight of ``‖α‖₂`` (which keeps α sparse).
        lr: Adam's learning rate.
        steps: optimisation steps.
        batch_size: latents per step (each generated twice: inserted and ablated).
        seed: seed of the latents and of the locations.
        measure: where ``s_c`` is measured: ``"region"`` (inside P↑) or ``"image"``.
        value_samples: samples for the default ``values``.
        progress: called as ``progress(step_record, steps)`` after each step.

    Returns:
        An :class:`AlphaResult` whose ``ranking`` orders the units by α.

    Raises:
        ValueError: unknown layer or concept, bad ``init``/``values``/``locations`` or
            hyper-parameters.
        ConceptAbsentError: (default values) the concept is absent from all samples.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from gan_dissect_callbacks.segmenters.base import GroundTruthSegmenter
        >>> from gan_dissect_callbacks.segmenters.vocabulary import ConceptVocabulary
        >>> net = nn.Sequential(nn.Unflatten(1, (3, 2, 2)), nn.Tanh())  # unit c paints channel c
        >>> net.latent_dim = 12
        >>> vocab = ConceptVocabulary.from_pairs([("lit", "color")])
        >>> seg = GroundTruthSegmenter(vocab, lambda x: x[:, :1] > 0,
        ...                            lambda x: torch.sigmoid(8 * x[:, :1]))
        >>> result = optimize_alpha(net, "0", seg, "lit", values=[2.0, 2.0, 2.0], steps=20,
        ...                         batch_size=4)
        >>> result.ranking[0], result.alpha[0] > result.alpha[1]
        (0, True)
    """
    lam = check_float(lam, "lam", minimum=0.0)
    lr = check_float(lr, "lr", minimum=0.0)
    steps = check_int(steps, "steps")
    batch_size = check_int(batch_size, "batch_size")
    value_samples = check_int(value_samples, "value_samples")
    check_choice(measure, "measure", MEASURES)
    # The objective is differentiated with respect to α, through the generator and segmenter.
    with prepared(generator, layer, segmenter, concept, seed=seed, grad=True) as s:
        device = s.device
        every = torch.arange(s.num_units)
        if values is None:
            k = unit_values(s, "concept_mean", 0.99, value_samples, 32, seed).double()
        else:
            k = check_values(values, s.num_units, "values")
        start = _initial_alpha(init, s.num_units)
        places = s.locations(locations)
        where_all = places.to(device)
        regions = s.regions(places)
        if measure == "image":
            regions = torch.ones_like(regions)
        alpha = start.clone().to(device).requires_grad_(True)
        optimizer = torch.optim.Adam([alpha], lr=lr)
        k_rows = k.float().to(device).expand(batch_size, -1)
        inserted_then_ablated = torch.cat([k_rows, torch.zeros_like(k_rows)])
        draws = torch.Generator().manual_seed(seed)
        history: list[AlphaStep] = []
        with torch.enable_grad():
            for step in range(1, steps + 1):
                z = s.generator.sample_latents(batch_size, draws)
                p = torch.randint(places.shape[0], (batch_size,), generator=draws).to(device)
                edit = UnitEdit(
                    alpha=alpha, value=inserted_then_ablated, where=where_all[p].repeat(2, 1, 1)
                )
                scores = s.concept_scores(s.images(twice(z), edit), soft=True)
                means = region_means(scores, regions[p].repeat(2, 1, 1))
                ace = means[:batch_size].mean() - means[batch_size:].mean()
                norm = torch.linalg.vector_norm(alpha)
                loss = -ace + lam * norm
                (grad,) = torch.autograd.grad(loss, [alpha])
                alpha.grad = grad
                optimizer.step()
                with torch.no_grad():
                    alpha.clamp_(0.0, 1.0)
                record = AlphaStep(step, loss.item(), ace.item(), norm.item())
                history.append(record)
                if progress is not None:
                    progress(record, steps)
        final = alpha.detach().cpu()
        # Many units can saturate at α = 1 (or 0); among equals, the one the objective still
        # pushes hardest (Adam's running mean of the gradient, most negative) is the most causal.
        push = optimizer.state[alpha]["exp_avg"].detach().cpu()
    ranking = sorted(
        every.tolist(), key=lambda u: (-final[u].item(), push[u].item(), -start[u].item(), u)
    )
    return AlphaResult(
        layer=layer,
        concept=concept,
        alpha=final.tolist(),
        ranking=ranking,
        init=start.tolist(),
        values=k.tolist(),
        history=history,
        lam=float(lam),
        lr=float(lr),
        batch_size=batch_size,
        seed=seed,
    )


def _initial_alpha(init: Sequence[float] | Tensor | None, num_units: int) -> Tensor:
    if init is None:
        return torch.full((num_units,), 0.5)
    scores = torch.as_tensor(init).detach().float().cpu()
    if scores.ndim != 1 or scores.numel() != num_units:
        raise ValueError(
            f"Expected argument `init` to hold one score per unit ({num_units}), but got shape "
            f"{list(scores.shape)}."
        )
    scores = torch.nan_to_num(scores, nan=0.0)
    top = scores.max()
    if not bool(torch.isfinite(scores).all()) or top <= 0:
        raise ValueError(
            "Expected argument `init` to hold finite scores with a positive maximum (e.g. IoUs), "
            f"but got maximum {top.item()}."
        )
    return (scores / top).clamp(0.0, 1.0)
