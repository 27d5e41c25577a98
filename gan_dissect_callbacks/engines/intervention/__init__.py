"""The intervention engine: do a concept's units *cause* it?

Dissection finds units whose activations match a concept; intervention tests causation by
editing those units and segmenting what the generator draws. Every edit goes through the one
rule of :mod:`~gan_dissect_callbacks.instrumentation`, ``r ← (1 − α) ⊙ r + α ⊙ k`` at the
featuremap pixels P:

- **ablation** ``x_a = f(0, r_Ū,P)``: α = 1 and k = 0 on the units U;
- **insertion** ``x_i = f(k, r_Ū,P)``: α = 1 and k = one constant per unit
  (:func:`insertion_values`: the unit's mean activation where the concept is, or a high quantile);
- **average causal effect** (:func:`average_causal_effect`)
  ``δ_U→c = E_z,P[s_c(x_i)] − E_z,P[s_c(x_a)]``;
- **removal curves** (:func:`removal_curve`): ablate the top-n units of a ranking over the whole
  image, n = 1…N (or at chosen n), and report the fraction of the concept's pixels removed,
  against n random units; :func:`removal_curves` measures several concepts on shared images;
- **insertion** where the concept is absent (:func:`insertion_effect`): the pixels gained
  (:func:`causal_effects` measures it with the ACE, on the images they share);
- every measure of several concepts at once (:func:`concept_effects`): each unedited sample
  generated and segmented once for the removal curves, k, the ACE and the insertion;
- the **continuous intervention** (:func:`optimize_alpha`):
  ``α* = argmin_α −δ_α + λ‖α‖₂`` through a soft segmenter, which ranks the units by α.

**Where s_c is measured.** ``s_c(x)`` is the share of the concept's pixels inside the region
``P↑``: the edited featuremap pixels P upsampled (nearest) to the segmentation resolution, i.e.
the *same* place that was edited. (The original code measured the inserted image at another
location than the edited one; here one region tensor serves both the edit and the measurement.)
With P = every pixel, ``s_c(x)`` is the concept's share of the whole image. An expectation over
``z`` and P weights every (sample, location) pair equally.

**The generator.** Every function takes the generator under analysis first: an
:class:`~gan_dissect_callbacks.engines.generator.AnalysedGenerator` (which says how latents are
drawn and images generated), or a plain module, wrapped with the defaults found on it. Layer
names are those of its module.

**Harmless.** Every function runs inside the generator's harmless context (eval mode, each
submodule's mode restored, the global RNG streams forked), draws latents from its own seeded
generator and removes its hooks. Under ``torch.distributed`` the streaming measures
(:func:`average_causal_effect`, :func:`removal_curve`, :func:`insertion_effect`) split the samples
like :func:`~gan_dissect_callbacks.engines.dissection.dissect` and sum their counts over
processes; :func:`insertion_values` and :func:`optimize_alpha` compute the same numbers on every
process. All ranks must call them together.

**Where each idea lives.** ``results`` (what the measures return), ``values`` (k), ``ranking``
(IoU rankings, patches P), ``ace``, ``removal``, ``insertion``, ``effects`` (the ACE and the
insertion on shared images), ``alpha`` (the continuous intervention) and ``images`` (the
pictures); ``_prepared`` checks an analysis and probes its layer once for all of them.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from gan_dissect_callbacks.segmenters.base import GroundTruthSegmenter
    >>> from gan_dissect_callbacks.segmenters.vocabulary import ConceptVocabulary
    >>> class Painter(nn.Module):  # unit 0 paints the red channel, unit 1 the green one
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.latent_dim = 2 * 4 * 4
    ...         self.features = nn.Unflatten(1, (2, 4, 4))
    ...     def forward(self, z):
    ...         r = self.features(z)
    ...         return torch.tanh(torch.cat([r, torch.zeros_like(r[:, :1])], 1))
    >>> vocab = ConceptVocabulary.from_pairs([("red", "color"), ("green", "color")])
    >>> seg = GroundTruthSegmenter(vocab, lambda x: x[:, :2] > 0)
    >>> curve = removal_curve(Painter(), "features", seg, "red", ranking=[0, 1], num_random=0,
    ...                       num_samples=8)
    >>> curve.removed
    [1.0, 1.0]
    >>> ace = average_causal_effect(Painter(), "features", seg, "green", units=[1], values=[2.0],
    ...                             num_samples=8)
    >>> ace.inserted, ace.ablated
    (1.0, 0.0)
"""

from gan_dissect_callbacks.arguments import Measure, ValueRule
from gan_dissect_callbacks.engines.intervention.ace import average_causal_effect
from gan_dissect_callbacks.engines.intervention.alpha import optimize_alpha
from gan_dissect_callbacks.engines.intervention.effects import causal_effects, concept_effects
from gan_dissect_callbacks.engines.intervention.images import intervention_images
from gan_dissect_callbacks.engines.intervention.insertion import insertion_effect
from gan_dissect_callbacks.engines.intervention.ranking import (
    iou_ranking,
    iou_scores,
    patch_locations,
)
from gan_dissect_callbacks.engines.intervention.removal import removal_curve, removal_curves
from gan_dissect_callbacks.engines.intervention.results import (
    ACEResult,
    AlphaResult,
    AlphaStep,
    ConceptAbsentError,
    ConceptEffects,
    InsertionResult,
    NoInsertionSiteError,
    RemovalCurve,
)
from gan_dissect_callbacks.engines.intervention.values import (
    concept_weighted_mean,
    insertion_values,
)

__all__ = [
    "ACEResult",
    "AlphaResult",
    "AlphaStep",
    "ConceptAbsentError",
    "ConceptEffects",
    "InsertionResult",
    "Measure",
    "NoInsertionSiteError",
    "RemovalCurve",
    "ValueRule",
    "average_causal_effect",
    "causal_effects",
    "concept_effects",
    "concept_weighted_mean",
    "insertion_effect",
    "insertion_values",
    "intervention_images",
    "iou_ranking",
    "iou_scores",
    "optimize_alpha",
    "patch_locations",
    "removal_curve",
    "removal_curves",
]
