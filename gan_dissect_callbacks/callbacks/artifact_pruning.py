"""Artifact units during training: detect, verify, prune (``ArtifactPruningCallback``).

``ArtifactPruningCallback(layer)`` runs, at its cadence, the three steps of
:mod:`gan_dissect_callbacks.engines.artifacts`:

1. **Rollback check** (when units are pruned): the global SWD with and without the pruning mask,
   on the same latents and several seeds. If the mask now makes samples worse beyond noise
   (``mean + num_se·SE < 0``), the whole mask is rolled back.
2. **Detection**: every unpruned unit is scored by how much it worsens the SWD of its own
   top-activating images against real images (ablated vs not, same latents); the ``top_n``
   worst are the candidates.
3. **Verification**: the global SWD with and without the candidates ablated, paired over
   ``num_seeds`` seeds. The improvement is *real* when ``mean − num_se·SE > min_improvement``;
   with ``prune=True`` the candidates then join the persistent :class:`PruningMask`.

The mask is a forward hook (through the one edit rule, ``apply_unit_edit``) on the layer of the
module that runs (the LightningModule, or the ``generator=`` module), so training goes on with the
units pruned. It is saved in the checkpoint (this callback's ``state_dict``), re-installed when
training resumes from it, and stays on the module after ``fit`` so inference uses it; a model
loaded elsewhere gets it back with
:func:`~gan_dissect_callbacks.engines.artifacts.apply_pruning_from_checkpoint`.

Each check is written on rank 0 as ``{log_dir}/{name}/step_XXXXXXX.json`` (and ``latest.json``),
and logged at the batch step of the check under ``{name}/`` (default ``artifacts``): the scalars,
the histogram of unit scores, the markdown table and the image grids of
:mod:`~gan_dissect_callbacks.reporting.artifacts`. Other loggers get the scalars.

**Step axis**: a *step* is a training batch (``trainer.fit_loop.total_batch_idx``), the axis of
``self.log``; a check after ``n`` batches is logged at step ``n``.

**Harmless**: analyses draw latents from their own seeded generators, with the global RNG forked,
in eval mode (each submodule's mode restored) and without gradients; with ``prune=False`` (or
while nothing is pruned) no hook stays on the module, so training is bit-for-bit the same as
without the callback. A failing analysis warns and training goes on, unless
``raise_on_error=True``. Under DDP the analysis runs on rank 0 and its decision is broadcast, so
every rank applies the same mask; only rank 0 writes.

**Real images**: see :mod:`~gan_dissect_callbacks.callbacks._real_images`. The SWD's real side
(their descriptors, directions and sorted projections,
:func:`~gan_dissect_callbacks.engines.artifacts.prepare_real`) is made at the first check and kept
for every later one: ``L × num_projections × num_real × num_descriptors_per_image`` float32 values
for ``L`` pyramid levels, 128 MiB at 32 px with the defaults. Unit scores use its first
``score_projections`` directions, the verifications all ``num_projections``.

Example:
    >>> callback = ArtifactPruningCallback("generator.layer3", every_n_train_steps=500, prune=True)
    >>> callback.state_key
    "ArtifactPruningCallback{'layer': 'generator.layer3'}"
    >>> ArtifactPruningCallback("layer3", generator="generator_ema", name="ema").state_key
    "ArtifactPruningCallback{'layer': 'layer3', 'name': 'ema'}"
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import lightning.pytorch as pl
from torch import Tensor, nn

from gan_dissect_callbacks.arguments import (
    SCORE_METHODS,
    ScoreMethod,
    check_choice,
    check_float,
    check_int,
    check_name,
)
from gan_dissect_callbacks.callbacks._real_images import (
    AUTO,
    RealImages,
    check_real_source,
    draw_real_images,
    resolve_discriminator,
)
from gan_dissect_callbacks.callbacks._schedule import ScheduledAnalysis
from gan_dissect_callbacks.callbacks._trainer import report_output, tensorboard_writers
from gan_dissect_callbacks.engines.artifacts import (
    MASK_STATE_KEY,
    AblationResult,
    PruningMask,
    RealSide,
    UnitArtifactScores,
    prepare_real,
    score_units,
    verify_ablation,
)
from gan_dissect_callbacks.engines.artifacts.scoring import TopActivatingSamples
from gan_dissect_callbacks.engines.sampling import LatentSampler
from gan_dissect_callbacks.reporting.artifacts import check_grids, check_scalars, log_artifacts

__all__ = ["ArtifactPruningCallback"]

#: Most top-activating images per candidate in the ``candidates`` grid.
_SHOWN_PER_UNIT = 8


class ArtifactPruningCallback(ScheduledAnalysis):
    """Find artifact units of one generator layer at a cadence, verify, and optionally prune them.

    Args:
        layer: dotted name of the layer in the analysed generator, e.g. ``"generator.layer3"``
            on the LightningModule (``"layer3"`` with ``generator="generator"``).
        real_images: real images (see :mod:`~gan_dissect_callbacks.callbacks._real_images`);
            ``None`` takes them from the training dataloader.
        num_real: how many real images to use (default: ``num_samples``).
        every_n_train_steps: check after every ``n`` training batches (``None``: never).
        every_n_epochs: check after every ``n`` training epochs (``None``: never).
        on_train_start: also check before the first batch.
        on_train_end: also check when training ends (skipped if the last batch was checked).
        num_samples: generated images per analysis (unit scoring and each verification seed).
        top_k: top-activating images per unit for its score.
        top_n: candidates (worst units) per check.
        prune: keep a verified ablation as a persistent mask. Off: only measure and log.
        min_improvement: SWD ×10³ the lower bound of the improvement must exceed.
        num_se: width of the noise band in standard errors (the paired improvement over seeds).
        num_seeds: repetitions of the verification (≥ 2, for a noise estimate).
        max_pruned_units: most units ever pruned in the layer (default: a quarter of its units).
        method: unit score (see :func:`~gan_dissect_callbacks.engines.artifacts.score_units`):
            ``"swd_ablation"`` (how much the unit worsens the SWD of its own top images),
            ``"swd"`` (SWD of its top images) or the cheaper ``"discriminator"`` proxy.
        discriminator: for ``method="discriminator"``: a submodule name of the LightningModule or
            a callable; ``"auto"`` takes ``pl_module.discriminator``.
        batch_size: images per forward pass.
        seed: seed of the analyses' latents (the same samples at every check).
        num_descriptors_per_image: SWD neighbourhoods per image per level (paper: 128).
        num_projections: SWD random directions per level of the verifications (paper: 512).
        score_projections: SWD random directions per level of the unit scores. A unit's score
            pairs its top images with their ablated twins on the same directions, so fewer
            suffice: on the toy GAN the scores at 128 and at 512 directions differ by less than
            half of what another latent seed changes. The first of the verification's directions
            are used (at most ``num_projections`` of them).
        num_images: images in the before/after grids (0: no grids).
        name: the analysis's name: tag prefix and report folder (default ``"artifacts"``); give
            each of several callbacks its own (it then enters ``state_key`` too).
        generator: the generator to analyse and prune: ``None`` (the LightningModule), a dotted
            attribute name such as ``"generator_ema"``, or an ``nn.Module`` kept outside it.
        generate: latents → images in ``[-1, 1]``; by default the analysed module's ``forward``.
        sample_latents: ``(n, generator) → latents``; by default the module's ``sample_latents``
            or standard normal latents of ``latent_dim`` / ``hparams.latent_dim``.
        latent_dim: latent size, when the module does not say.
        raise_on_error: re-raise failures of the analysis instead of warning and going on.
        max_overhead: the largest share of training wall time the analysis may take; the
            cadence is stretched to hold it (``None``: no budget). See docs/callbacks.md.
    """

    _what = "check"
    #: It changes the generator only where _may_change_generator says (callbacks/_sharing.py).
    _declares_generator_changes = True
    _default_name = "artifacts"
    #: One plain-value entry per check: scores, candidates, SWD with/without, decision.
    history: list[dict[str, Any]]

    def __init__(
        self,
        layer: str,
        *,
        real_images: RealImages | None = None,
        num_real: int | None = None,
        every_n_train_steps: int | None = 500,
        every_n_epochs: int | None = None,
        on_train_start: bool = False,
        on_train_end: bool = True,
        num_samples: int = 256,
        top_k: int = 16,
        top_n: int = 3,
        prune: bool = False,
        min_improvement: float = 0.0,
        num_se: float = 2.0,
        num_seeds: int = 3,
        max_pruned_units: int | None = None,
        method: ScoreMethod = "swd_ablation",
        discriminator: str | Callable[[Tensor], Tensor] | None = AUTO,
        batch_size: int = 64,
        seed: int = 0,
        num_descriptors_per_image: int = 128,
        num_projections: int = 512,
        score_projections: int = 128,
        num_images: int = 8,
        name: str | None = None,
        generator: str | nn.Module | None = None,
        generate: Callable[[Tensor], Tensor] | None = None,
        sample_latents: LatentSampler | None = None,
        latent_dim: int | None = None,
        raise_on_error: bool = False,
        max_overhead: float | None = 0.05,
    ) -> None:
        super().__init__(
            every_n_train_steps=every_n_train_steps,
            every_n_epochs=every_n_epochs,
            on_train_start=on_train_start,
            on_train_end=on_train_end,
            raise_on_error=raise_on_error,
            name=name,
            generator=generator,
            generate=generate,
            sample_latents=sample_latents,
            latent_dim=latent_dim,
            max_overhead=max_overhead,
        )
        self.layer = check_name(layer, "layer")
        check_real_source(real_images)
        num_samples = check_int(num_samples, "num_samples")
        top_k = check_int(top_k, "top_k")
        top_n = check_int(top_n, "top_n")
        batch_size = check_int(batch_size, "batch_size")
        num_descriptors_per_image = check_int(
            num_descriptors_per_image, "num_descriptors_per_image"
        )
        num_projections = check_int(num_projections, "num_projections")
        # Never more than the verification's: the scores use the first of its directions.
        self.score_projections = min(
            check_int(score_projections, "score_projections"), num_projections
        )
        self.num_seeds = check_int(num_seeds, "num_seeds", minimum=2)
        self.num_images = check_int(num_images, "num_images", minimum=0)
        self.num_real = check_int(num_real, "num_real", optional=True) or num_samples
        self.max_pruned_units = check_int(
            max_pruned_units, "max_pruned_units", minimum=0, optional=True
        )
        if top_k > num_samples:
            raise ValueError(
                f"Expected argument `top_k` to be at most `num_samples` ({num_samples}), but got"
                f" {top_k}."
            )
        if not isinstance(prune, bool):
            raise ValueError(f"Expected argument `prune` to be a bool, but got {prune!r}.")
        self.min_improvement = check_float(min_improvement, "min_improvement")
        self.num_se = check_float(num_se, "num_se", minimum=0.0)
        check_choice(method, "method", SCORE_METHODS)
        self.method: ScoreMethod = method
        self.real_images = real_images
        self.num_samples = num_samples
        self.top_k = top_k
        self.top_n = top_n
        self.prune = prune
        self.discriminator = discriminator
        self.batch_size = batch_size
        self.seed = check_int(seed, "seed", minimum=0)
        self.num_descriptors_per_image = num_descriptors_per_image
        self.num_projections = num_projections
        #: The persistent mask (empty until a verified pruning is kept).
        self.mask = PruningMask()
        self.last_scores: UnitArtifactScores | None = None
        self.last_ablation: AblationResult | None = None
        self._real: Tensor | None = None
        #: The SWD's real side (sorted projections of the real images), made at the first check.
        self._real_side: RealSide | None = None

    @property
    def state_key(self) -> str:
        return self._state_key_of(layer=self.layer)

    # ------------------------------------------------------------------ Lightning hooks

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self.analysed_generator.check_layers([self.layer])  # raises with the list of valid names
        if (
            self.method == "discriminator"
            and resolve_discriminator(pl_module, self.discriminator) is None
        ):
            raise ValueError(
                "ArtifactPruningCallback(method='discriminator') needs a discriminator, but the"
                f" module {type(pl_module).__name__} has no `discriminator` submodule. Pass"
                " `discriminator=` (a layer name or a callable)."
            )
        self._install()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After a resume, load_state_dict has run by now: make sure the mask is on the module.
        self._install()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), MASK_STATE_KEY: self.mask.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.mask.load_state_dict(state_dict.get(MASK_STATE_KEY, {"units": {}}))
        self._install()

    def _install(self) -> None:
        """Put the mask on the module that runs, once there is one and something is pruned."""
        if self._generator is not None and self.mask.num_pruned and not self.mask.is_applied:
            self.mask.apply(self._generator.module)

    # ------------------------------------------------------------------ the check

    def _analyse(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int) -> None:
        """Decide on rank 0, broadcast the decision, apply it everywhere. All ranks call it."""
        entry: dict[str, Any] | None = None
        error: Exception | None = None
        if trainer.is_global_zero:
            try:
                entry = self._decide(trainer, pl_module, step)
            except Exception as err:
                error = err
        message = None if error is None else f"{type(error).__name__}: {error}"
        entry, message = trainer.strategy.broadcast((entry, message), src=0)
        if message is not None:  # every rank fails alike, so every rank skips the check
            raise error if error is not None else RuntimeError(message)
        assert entry is not None
        if entry["rolled_back"] or entry["pruned"]:
            self._changed_step = step  # analyses after this one draw their samples again
        if entry["rolled_back"]:
            self.mask.restore(self.layer)
        if entry["pruned"]:
            self.mask.prune(self.layer, entry["pruned"])
            self._install()
        entry["pruned_units"] = self.mask.units(self.layer)
        self.history.append(entry)
        if trainer.is_global_zero:
            with self._reported(step):
                self._write(trainer, entry)

    def _analysis_kwargs(self) -> dict[str, Any]:
        return {
            "num_samples": self.num_samples,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "num_descriptors_per_image": self.num_descriptors_per_image,
            "num_projections": self.num_projections,
        }

    def _decide(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int
    ) -> dict[str, Any]:
        g = self.analysed_generator
        if self._real is None:
            self._real = draw_real_images(
                self.real_images, trainer, pl_module, self.num_real, self.seed
            )
        real = self._real
        common = self._analysis_kwargs()
        if self._real_side is None:
            self._real_side = prepare_real(
                real,
                seed=self.seed,
                num_descriptors_per_image=self.num_descriptors_per_image,
                num_projections=self.num_projections,
            )
        side = self._real_side
        entry: dict[str, Any] = {"step": step, "rolled_back": [], "mask_check": None}
        # Drawn beside other analyses from the generator as it was, so with the whole mask on.
        shared = self._take_samples(step)
        shared = shared if isinstance(shared, TopActivatingSamples) else None

        pruned = self.mask.units(self.layer)
        if pruned:
            # With the hooks off, "ablated" is the pruned model and "plain" the unpruned one.
            self.mask.remove()
            try:
                kept = verify_ablation(
                    g,
                    self.layer,
                    pruned,
                    real,
                    num_seeds=self.num_seeds,
                    real_side=side,
                    **common,
                )
            finally:
                self.mask.apply(g.module)
            entry["mask_check"] = kept.to_dict()
            if kept.hurts(self.num_se):
                entry["rolled_back"] = pruned
                pruned = []

        # A rolled-back mask leaves the module only when the decision is applied on every rank;
        # until then it is lifted here, and its units are not candidates again at this check.
        with self._without_units(entry["rolled_back"]):
            scores = score_units(
                g,
                self.layer,
                real,
                method=self.method,
                discriminator=resolve_discriminator(pl_module, self.discriminator),
                top_k=self.top_k,
                exclude=sorted(set(pruned) | set(entry["rolled_back"])),
                step=step,
                keep_images=bool(tensorboard_writers(trainer)),  # for the candidates grid
                real_side=side if self.method != "discriminator" else None,
                samples=shared if not entry["rolled_back"] else None,
                **{**common, "num_projections": self.score_projections},
            )
            cap = (
                self.max_pruned_units
                if self.max_pruned_units is not None
                else len(scores.scores) // 4
            )
            candidates = scores.top(max(0, min(self.top_n, cap - len(pruned))))
            ablation = verify_ablation(
                g,
                self.layer,
                candidates,
                real,
                num_seeds=self.num_seeds,
                num_examples=self.num_images,
                real_side=side,
                **common,
            )
        accepted = ablation.is_real(self.min_improvement, self.num_se)
        self.last_scores, self.last_ablation = scores, ablation
        entry.update(
            scores=scores.to_dict()["scores"],
            score_baseline=scores.baseline,
            candidates=candidates,
            ablation=ablation.to_dict(),
            accepted=accepted,
            pruned=sorted(candidates) if accepted and self.prune else [],
        )
        return entry

    @contextmanager
    def _without_units(self, units: list[int]) -> Iterator[None]:
        """Measure with ``units`` lifted from the mask; they are put back on exit."""
        if not units:
            yield
            return
        self.mask.restore(self.layer)
        try:
            yield
        finally:
            self.mask.prune(self.layer, units)

    def _sample_consumer(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int
    ) -> TopActivatingSamples | None:
        if not trainer.is_global_zero:  # rank 0 decides alone
            return None
        return TopActivatingSamples(
            self.layer, num_samples=self.num_samples, batch_size=self.batch_size, seed=self.seed
        )

    def _may_change_generator(self) -> bool:
        # A kept mask can be rolled back at a check even with prune=False.
        return self.prune or self.mask.num_pruned > 0

    # ------------------------------------------------------------------ writing

    def _write(self, trainer: pl.Trainer, entry: dict[str, Any]) -> None:
        name, step = self.analysis_name, int(entry["step"])
        out = report_output(trainer, name)
        out.log_scalars(check_scalars(entry, name), step)
        if out.writers:
            shown = min(self.top_k, _SHOWN_PER_UNIT)
            grids = check_grids(self.last_ablation, self.last_scores, shown)
            for writer in out.tensorboard():
                log_artifacts(writer, entry, layer=self.layer, prefix=name, grids=grids)
        self._write_json_last(out, step, entry)
