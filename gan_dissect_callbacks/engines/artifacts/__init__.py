"""Artifact units: find the units whose samples look worst, check that ablating them helps, prune.

The paper found artifact units by hand and by the FID of each unit's top-activating images. This
engine automates it in three steps, none of which needs Lightning:

1. :func:`score_units` — the *artifact score* of every unit of a layer, from its ``top_k``
   top-activating generated images (by spatial max). By default (``"swd_ablation"``) it is the
   sliced Wasserstein distance to real images (SWD ×10³, averaged over pyramid levels; see
   :mod:`~gan_dissect_callbacks.functional.swd`) of those images minus that of the same latents
   regenerated with the unit ablated: how much the unit itself makes its own top images unlike
   real ones. The plain SWD of the top images (``"swd"``, the analogue of the paper's per-unit
   FID) is there too, but it also flags units that merely select unusual content; on the planted
   toy world it misses the planted units that the ablation-paired score ranks first. The cheaper
   proxy
   ``"discriminator"`` scores a unit by minus the mean discriminator output on its top images.
   Descriptors are cut once per image and all units are projected and compared in batched tensor
   code (one sort of the real projections per direction, shared by every unit;
   :mod:`~gan_dissect_callbacks.functional.swd_sets`).
2. :func:`verify_ablation` — ablate the chosen units (through the one edit rule,
   :func:`~gan_dissect_callbacks.instrumentation.apply_unit_edit`) and measure the *global* SWD
   with and without on the **same** latents, the same descriptor positions and the same
   projections, for several seeds. The paired improvement ``swd − swd_ablated`` is reported with
   its standard deviation and standard error; it is *real* when its lower bound
   ``mean − num_se · SE`` exceeds ``min_improvement``.
3. :class:`PruningMask` — keep an ablation for good: a per-layer unit mask installed as a forward
   hook that calls ``apply_unit_edit``; saved as plain values, re-installed on a freshly loaded
   model with :func:`apply_pruning_from_checkpoint`.

:func:`find_artifact_units` runs steps 1 and 2 in one call. Both steps compare with one real
side (the real descriptors, directions and sorted projections of the analysis's seed,
:func:`prepare_real`), made once; a caller that checks again keeps it and passes
``real_side=``. Each step has its module: :mod:`.scoring`, :mod:`.verification`,
:mod:`.pruning`. Every pass runs inside
:meth:`~gan_dissect_callbacks.engines.generator.AnalysedGenerator.harmless` (latents from their
own seeded generator, the global RNG forked, eval mode with each submodule's mode restored, no
gradients), so it can run in the middle of training without changing it.

Example:
    >>> import torch
    >>> from gan_dissect_callbacks.demos.gan import SceneGAN
    >>> from gan_dissect_callbacks.instrumentation import capture_activations
    >>> gan = SceneGAN(latent_dim=8, width=4, image_size=16)
    >>> real = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    >>> scores = score_units(gan, "generator.layer2", real, num_samples=8, top_k=2,
    ...                      num_descriptors_per_image=8, num_projections=16)
    >>> len(scores.scores), scores.ranking == sorted(range(4), key=lambda u: -scores.scores[u])
    (4, True)
    >>> mask = PruningMask({"generator.layer2": scores.top(1)}).apply(gan)
    >>> z = gan.sample_latents(2, generator=torch.Generator().manual_seed(0))
    >>> with capture_activations(gan, ["generator.layer2"]) as acts:
    ...     _ = gan(z)
    >>> float(acts["generator.layer2"][:, scores.top(1)].abs().max())
    0.0
    >>> mask.remove()
"""

from gan_dissect_callbacks.arguments import ScoreMethod
from gan_dissect_callbacks.engines.artifacts._real_side import RealSide, prepare_real
from gan_dissect_callbacks.engines.artifacts.pruning import (
    MASK_STATE_KEY,
    PruningMask,
    apply_pruning_from_checkpoint,
)
from gan_dissect_callbacks.engines.artifacts.scoring import UnitArtifactScores, score_units
from gan_dissect_callbacks.engines.artifacts.verification import (
    AblationResult,
    ArtifactSearch,
    find_artifact_units,
    verify_ablation,
)
from gan_dissect_callbacks.functional.swd_sets import unit_swd_scores

__all__ = [
    "MASK_STATE_KEY",
    "AblationResult",
    "ArtifactSearch",
    "PruningMask",
    "RealSide",
    "ScoreMethod",
    "UnitArtifactScores",
    "apply_pruning_from_checkpoint",
    "find_artifact_units",
    "prepare_real",
    "score_units",
    "unit_swd_scores",
    "verify_ablation",
]
