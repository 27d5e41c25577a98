"""Artifact units during training: detect, verify, prune (``ArtifactPruningCallback``), and watch
sample quality beside interpretability (``QualityMonitor``).

``ArtifactPruningCallback(layer)`` runs, every ``every_n_train_steps`` training batches, the three
steps of :mod:`gan_dissect_callbacks.engines.artifacts`:

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
module being trained, so training goes on with the units pruned. It is saved in the checkpoint
(this callback's ``state_dict``), re-installed when training resumes from it, and stays on the
module after ``fit`` so inference uses it; a model loaded elsewhere gets it back with
:func:`~gan_dissect_callbacks.engines.artifacts.apply_pruning_from_checkpoint`.

Logged to every TensorBoard logger, at the batch step of the check (tags under ``tag_prefix``,
default ``artifacts``): scalars ``swd`` (the model as it trains, mask included), ``swd_ablated``
(with the candidates ablated too), ``improvement``, ``improvement_se``, ``accepted``,
``pruned_units``, ``swd_unpruned`` (without the mask, when there is one) and ``top_score`` /
``score_baseline``; a histogram ``unit_scores``; a markdown table ``chosen_units``; image grids
``before`` / ``after`` (the same latents without and with the ablation) and ``candidates`` (each
candidate's top-activating images, one row per unit). Other loggers get the scalars.

``QualityMonitor`` logs the global SWD (per level and averaged) and the discriminator's mean score
at a cadence, under ``quality/``, so runs of different variants compare as in the paper's table
(interpretable units from :class:`~gan_dissect_callbacks.callbacks.dissection.DissectionCallback`
beside SWD).

**Step axis**: a *step* is a training batch (``trainer.fit_loop.total_batch_idx``), the axis of
``self.log``; a check after ``n`` batches is logged at step ``n``.

**Harmless**: analyses draw latents from their own seeded generators, with the global RNG forked,
in eval mode (each submodule's mode restored) and without gradients; with ``prune=False`` (or
while nothing is pruned) no hook stays on the module, so training is bit-for-bit the same as
without the callback. A failing analysis warns and training goes on, unless
``raise_on_error=True``. Under DDP the analysis runs on rank 0 and its decision is broadcast, so
every rank applies the same mask; only rank 0 writes.

**Real images**: a tensor ``[N, 3, S, S]`` in ``[-1, 1]``, a function ``(n, generator) → images``,
or (``None``) the first ``num_real`` images of the datamodule's (or the module's) training
dataloader, drawn once with the global RNG forked and kept on the CPU.

Example:
    >>> callback = ArtifactPruningCallback("generator.layer3", every_n_train_steps=500, prune=True)
    >>> callback.state_key
    "ArtifactPruningCallback{'layer': 'generator.layer3', 'tag_prefix': 'artifacts'}"
    >>> QualityMonitor(every_n_train_steps=250).state_key
    "QualityMonitor{'tag_prefix': 'quality'}"
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from gan_dissect_callbacks.callbacks._schedule import ScheduledAnalysis
from gan_dissect_callbacks.callbacks._trainer import tensorboard_writers
from gan_dissect_callbacks.engines.artifacts import (
    MASK_STATE_KEY,
    AblationResult,
    PruningMask,
    UnitArtifactScores,
    score_units,
    verify_ablation,
)
from gan_dissect_callbacks.engines.sampling import (
    LatentSampler,
    iterate_samples,
    latents_for,
    resolve_latent_sampler,
    rng_isolated,
)
from gan_dissect_callbacks.instrumentation import eval_mode, resolve_layer
from gan_dissect_callbacks.metrics.quality import DiscriminatorScore
from gan_dissect_callbacks.metrics.swd import SlicedWassersteinDistance
from gan_dissect_callbacks.reporting.images import image_grid

__all__ = ["ArtifactPruningCallback", "QualityMonitor"]

#: Real images: a tensor ``[N, 3, S, S]`` in ``[-1, 1]`` or ``(n, generator) → images``.
RealImages = Tensor | Callable[[int, torch.Generator], Tensor]

_METHODS = ("swd_ablation", "swd", "discriminator")
_AUTO = "auto"


# ---------------------------------------------------------------------------------- helpers


def _check_int(value: object, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"Expected argument `{name}` to be an int ≥ {minimum}, but got {value!r}.")
    return value


def _check_real_source(real_images: object) -> None:
    if (
        real_images is not None
        and not isinstance(real_images, Tensor)
        and not callable(real_images)
    ):
        raise TypeError(
            "Expected argument `real_images` to be None (use the training dataloader), a tensor"
            " [N, 3, S, S] or a function (n, generator) -> images, but got"
            f" {type(real_images).__name__}."
        )


def _images_of(batch: Any) -> Tensor:
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, list | tuple) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    if isinstance(batch, dict):
        for key in ("image", "images", "img", "x"):
            if isinstance(batch.get(key), Tensor):
                return batch[key]
    raise TypeError(
        f"Cannot find the images in a training batch of type {type(batch).__name__}. Pass"
        " `real_images=` (a tensor or a function (n, generator) -> images) to the callback."
    )


def _draw_real_images(
    source: RealImages | None,
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    num: int,
    seed: int,
) -> Tensor:
    """``num`` real images on the CPU (fewer if the source has fewer), without touching the RNG."""
    if isinstance(source, Tensor):
        return source[:num].detach().float().cpu()
    with rng_isolated(pl_module.device):
        if source is not None:
            images = source(num, torch.Generator().manual_seed(seed))
            if not isinstance(images, Tensor):
                raise TypeError(
                    "Expected the `real_images` function to return a tensor [n, 3, S, S], but got"
                    f" {type(images).__name__}."
                )
            return images[:num].detach().float().cpu()
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None:
            loader = datamodule.train_dataloader()
        else:
            try:
                loader = pl_module.train_dataloader()
            except Exception as err:
                raise ValueError(
                    "Cannot find real images: the trainer has no datamodule and the module no"
                    " train_dataloader(). Pass `real_images=` to the callback."
                ) from err
        chunks, count = [], 0
        for batch in loader:
            images = _images_of(batch).detach().float().cpu()
            chunks.append(images)
            count += images.shape[0]
            if count >= num:
                break
    if not chunks:
        raise ValueError("Expected the training dataloader to yield images, but it was empty.")
    return torch.cat(chunks)[:num]


def _resolve_discriminator(
    pl_module: pl.LightningModule, discriminator: str | Callable[[Tensor], Tensor] | None
) -> Callable[[Tensor], Tensor] | None:
    if discriminator is None or callable(discriminator):
        return discriminator
    if discriminator == _AUTO:
        found = getattr(pl_module, "discriminator", None)
        return found if isinstance(found, nn.Module) else None
    return resolve_layer(pl_module, discriminator)  # raises with the valid names


def _log_scalars(trainer: pl.Trainer, scalars: dict[str, float], step: int) -> None:
    """Scalars to every logger: TensorBoard writers directly, others through ``log_metrics``."""
    from lightning.pytorch.loggers import TensorBoardLogger

    for logger in trainer.loggers:
        if not isinstance(logger, TensorBoardLogger):
            logger.log_metrics(scalars, step=step)
    for writer in tensorboard_writers(trainer):
        for tag, value in scalars.items():
            writer.add_scalar(tag, value, global_step=step)


# ---------------------------------------------------------------------------------- pruning


class ArtifactPruningCallback(ScheduledAnalysis):
    """Find artifact units of one generator layer at a cadence, verify, and optionally prune them.

    Args:
        layer: dotted name of the layer on the LightningModule, e.g. ``"generator.layer3"``.
        real_images: real images (see the module docstring); ``None`` takes them from the
            training dataloader.
        num_real: how many real images to use (default: ``num_samples``).
        every_n_train_steps: check after every ``n`` training batches.
        num_samples: generated images per analysis (unit scoring and each verification seed).
        top_k: top-activating images per unit for its score.
        top_n: candidates (worst units) per check.
        prune: keep a verified ablation as a persistent mask. Off: only measure and log.
        min_improvement: SWD ×10³ the lower bound of the improvement must exceed.
        num_se: width of the noise band in standard errors (the paired improvement over seeds).
        num_seeds: repetitions of the verification (≥ 2, for a noise estimate).
        max_pruned: most units ever pruned in the layer (default: a quarter of its units).
        method: unit score (see :func:`~gan_dissect_callbacks.engines.artifacts.score_units`):
            ``"swd_ablation"`` (how much the unit worsens the SWD of its own top images),
            ``"swd"`` (SWD of its top images) or the cheaper ``"discriminator"`` proxy.
        discriminator: for ``method="discriminator"``: a layer name on the module or a callable;
            ``"auto"`` takes ``pl_module.discriminator``.
        batch_size: images per forward pass.
        seed: seed of the analyses' latents (the same samples at every check).
        num_descriptors_per_image: SWD neighbourhoods per image per level (paper: 128).
        num_projections: SWD random directions per level (paper: 512).
        num_examples: images in the before/after grids (0: no grids).
        tag_prefix: prefix of the logged tags (give each callback its own when watching several
            layers).
        sample_latents: ``(n, generator) → latents``; by default ``pl_module.sample_latents`` or
            standard normal latents of ``pl_module.latent_dim`` / ``hparams.latent_dim``.
        latent_dim: latent size, when the module does not say.
        generate: latents → images in ``[-1, 1]``; by default the module's ``forward``.
        raise_on_error: re-raise failures of the analysis instead of warning and going on.
    """

    _what = "check"
    #: One plain-value entry per check: scores, candidates, SWD with/without, decision.
    history: list[dict[str, Any]]

    def __init__(
        self,
        layer: str,
        *,
        real_images: RealImages | None = None,
        num_real: int | None = None,
        every_n_train_steps: int = 500,
        num_samples: int = 256,
        top_k: int = 16,
        top_n: int = 3,
        prune: bool = False,
        min_improvement: float = 0.0,
        num_se: float = 2.0,
        num_seeds: int = 3,
        max_pruned: int | None = None,
        method: str = "swd_ablation",
        discriminator: str | Callable[[Tensor], Tensor] | None = _AUTO,
        batch_size: int = 64,
        seed: int = 0,
        num_descriptors_per_image: int = 128,
        num_projections: int = 256,
        num_examples: int = 16,
        tag_prefix: str = "artifacts",
        sample_latents: LatentSampler | None = None,
        latent_dim: int | None = None,
        generate: Callable[[Tensor], Tensor] | None = None,
        raise_on_error: bool = False,
    ) -> None:
        if not isinstance(layer, str) or not layer:
            raise ValueError(
                f"Expected argument `layer` to be a layer name such as 'generator.layer3', but got"
                f" {layer!r}."
            )
        _check_real_source(real_images)
        for name, value in (
            ("every_n_train_steps", every_n_train_steps),
            ("num_samples", num_samples),
            ("top_k", top_k),
            ("top_n", top_n),
            ("batch_size", batch_size),
            ("num_descriptors_per_image", num_descriptors_per_image),
            ("num_projections", num_projections),
        ):
            _check_int(value, name)
        _check_int(num_seeds, "num_seeds", minimum=2)
        _check_int(num_examples, "num_examples", minimum=0)
        if num_real is not None:
            _check_int(num_real, "num_real")
        if max_pruned is not None:
            _check_int(max_pruned, "max_pruned", minimum=0)
        if top_k > num_samples:
            raise ValueError(
                f"Expected argument `top_k` to be at most `num_samples` ({num_samples}), but got"
                f" {top_k}."
            )
        if not isinstance(prune, bool):
            raise ValueError(f"Expected argument `prune` to be a bool, but got {prune!r}.")
        if isinstance(min_improvement, bool) or not isinstance(min_improvement, int | float):
            raise ValueError(
                f"Expected argument `min_improvement` to be a float, but got {min_improvement!r}."
            )
        if isinstance(num_se, bool) or not isinstance(num_se, int | float) or num_se < 0:
            raise ValueError(f"Expected argument `num_se` to be a float ≥ 0, but got {num_se!r}.")
        if method not in _METHODS:
            raise ValueError(
                f"Expected argument `method` to be one of {_METHODS}, but got {method!r}."
            )
        if not isinstance(tag_prefix, str) or not tag_prefix:
            raise ValueError(
                f"Expected argument `tag_prefix` to be a non-empty string, but got {tag_prefix!r}."
            )
        # Validated above as a required int, so the base's own check never speaks.
        super().__init__(every_n_train_steps=every_n_train_steps, raise_on_error=raise_on_error)
        self.layer = layer
        self.real_images = real_images
        self.num_real = num_real if num_real is not None else num_samples
        self.num_samples = num_samples
        self.top_k = top_k
        self.top_n = top_n
        self.prune = prune
        self.min_improvement = float(min_improvement)
        self.num_se = float(num_se)
        self.num_seeds = num_seeds
        self.max_pruned = max_pruned
        self.method = method
        self.discriminator = discriminator
        self.batch_size = batch_size
        self.seed = seed
        self.num_descriptors_per_image = num_descriptors_per_image
        self.num_projections = num_projections
        self.num_examples = num_examples
        self.tag_prefix = tag_prefix
        self.sample_latents = sample_latents
        self.latent_dim = latent_dim
        self.generate = generate
        #: The persistent mask (empty until a verified pruning is kept).
        self.mask = PruningMask()
        self.last_scores: UnitArtifactScores | None = None
        self.last_ablation: AblationResult | None = None
        self._module: pl.LightningModule | None = None
        self._real: Tensor | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(layer=self.layer, tag_prefix=self.tag_prefix)

    # ------------------------------------------------------------------ Lightning hooks

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        resolve_layer(pl_module, self.layer)  # raises with the list of valid names
        resolve_latent_sampler(pl_module, self.sample_latents, self.latent_dim)
        if (
            self.method == "discriminator"
            and _resolve_discriminator(pl_module, self.discriminator) is None
        ):
            raise ValueError(
                "ArtifactPruningCallback(method='discriminator') needs a discriminator, but the"
                f" module {type(pl_module).__name__} has no `discriminator` submodule. Pass"
                " `discriminator=` (a layer name or a callable)."
            )
        self._module = pl_module
        self._install()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After a resume, load_state_dict has run by now: make sure the mask is on the module.
        self._module = pl_module
        self._install()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), MASK_STATE_KEY: self.mask.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.mask.load_state_dict(state_dict.get(MASK_STATE_KEY, {"units": {}}))
        self._install()

    def _install(self) -> None:
        if self._module is not None and self.mask.num_pruned and not self.mask.is_applied:
            self.mask.apply(self._module)

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
        if entry["rolled_back"]:
            self.mask.restore(self.layer)
        if entry["pruned"]:
            self.mask.prune(self.layer, entry["pruned"])
            self._module = pl_module
            self._install()
        entry["pruned_units"] = self.mask.units(self.layer)
        self.history.append(entry)
        if trainer.is_global_zero:
            with self._reported(step):
                self._write(trainer, pl_module, entry)

    def _analysis_kwargs(self) -> dict[str, Any]:
        return {
            "num_samples": self.num_samples,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "num_descriptors_per_image": self.num_descriptors_per_image,
            "num_projections": self.num_projections,
            "generate": self.generate,
            "sample_latents": self.sample_latents,
            "latent_dim": self.latent_dim,
        }

    def _decide(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int
    ) -> dict[str, Any]:
        if self._real is None:
            self._real = _draw_real_images(
                self.real_images, trainer, pl_module, self.num_real, self.seed
            )
        real = self._real
        common = self._analysis_kwargs()
        entry: dict[str, Any] = {"step": step, "rolled_back": [], "mask_check": None}

        pruned = self.mask.units(self.layer)
        if pruned:
            # With the hooks off, "ablated" is the pruned model and "plain" the unpruned one.
            module = self._module if self._module is not None else pl_module
            self.mask.remove()
            try:
                kept = verify_ablation(
                    pl_module, self.layer, pruned, real, num_seeds=self.num_seeds, **common
                )
            finally:
                self.mask.apply(module)
            entry["mask_check"] = kept.to_dict()
            if kept.hurts(self.num_se):
                entry["rolled_back"] = pruned
                pruned = []

        # A rolled-back mask leaves the module only when the decision is applied on every rank;
        # until then it is lifted here, and its units are not candidates again at this check.
        with self._without_units(entry["rolled_back"]):
            scores = score_units(
                pl_module,
                self.layer,
                real,
                method=self.method,  # type: ignore[arg-type]
                discriminator=_resolve_discriminator(pl_module, self.discriminator),
                top_k=self.top_k,
                exclude=sorted(set(pruned) | set(entry["rolled_back"])),
                step=step,
                **common,
            )
            cap = self.max_pruned if self.max_pruned is not None else len(scores.scores) // 4
            candidates = scores.top(max(0, min(self.top_n, cap - len(pruned))))
            ablation = verify_ablation(
                pl_module,
                self.layer,
                candidates,
                real,
                num_seeds=self.num_seeds,
                num_examples=self.num_examples,
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

    # ------------------------------------------------------------------ logging

    def _write(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, entry: dict[str, Any]
    ) -> None:
        p, step = self.tag_prefix, int(entry["step"])
        ablation = entry["ablation"]
        finite = [s for s in entry["scores"] if s is not None]
        scalars = {
            f"{p}/swd": sum(ablation["swd"]) / len(ablation["swd"]),
            f"{p}/swd_ablated": sum(ablation["swd_ablated"]) / len(ablation["swd_ablated"]),
            f"{p}/improvement": ablation["mean_improvement"],
            f"{p}/accepted": float(entry["accepted"]),
            f"{p}/pruned_units": float(len(entry["pruned_units"])),
            f"{p}/score_baseline": float(entry["score_baseline"]),
        }
        if ablation["improvement_se"] is not None:
            scalars[f"{p}/improvement_se"] = ablation["improvement_se"]
        if finite:
            scalars[f"{p}/top_score"] = max(finite)
        if entry["mask_check"] is not None:
            kept = entry["mask_check"]
            scalars[f"{p}/swd_unpruned"] = sum(kept["swd"]) / len(kept["swd"])
        _log_scalars(trainer, scalars, step)
        writers = tensorboard_writers(trainer)
        if not writers:
            return
        grids = self._grids(pl_module)
        text = self._markdown(entry)
        for writer in writers:
            if finite:
                writer.add_histogram(f"{p}/unit_scores", torch.tensor(finite), global_step=step)
            writer.add_text(f"{p}/chosen_units", text, global_step=step)
            for name, grid in grids.items():
                writer.add_image(f"{p}/{name}", grid, global_step=step)
            writer.flush()

    def _markdown(self, entry: dict[str, Any]) -> str:
        ablation = entry["ablation"]
        se = ablation["improvement_se"]
        lines = [
            f"**{self.layer}**, step {entry['step']}: candidates {entry['candidates']}; SWD×10³"
            f" {sum(ablation['swd']) / len(ablation['swd']):.2f} → "
            f"{sum(ablation['swd_ablated']) / len(ablation['swd_ablated']):.2f} ablated;"
            f" improvement {ablation['mean_improvement']:.2f} ± {se if se is not None else 0:.2f}"
            f" (SE, {len(ablation['seeds'])} seeds);"
            f" {'real' if entry['accepted'] else 'not beyond noise'}"
            + (f"; **pruned** {entry['pruned']}" if entry["pruned"] else "")
            + (f"; **rolled back** {entry['rolled_back']}" if entry["rolled_back"] else ""),
            "",
            f"Pruned now: {entry['pruned_units']}. Score baseline {entry['score_baseline']:.2f}.",
            "",
            "| unit | artifact score |",
            "|---:|---:|",
        ]
        scores = entry["scores"]
        for u in entry["candidates"]:
            lines.append(f"| {u} | {scores[u]:.2f} |")
        return "\n".join(lines)

    @torch.no_grad()
    def _grids(self, pl_module: pl.LightningModule) -> dict[str, Tensor]:
        grids: dict[str, Tensor] = {}
        ablation = self.last_ablation
        if ablation is not None and ablation.examples is not None:
            before, after = ablation.examples
            grids["before"] = image_grid(before, nrow=8)
            grids["after"] = image_grid(after, nrow=8)
        scores = self.last_scores
        if scores is None or not ablation or not ablation.units:
            return grids
        shown = min(self.top_k, 8)
        indices = [i for u in ablation.units for i in scores.top_samples[u][:shown]]
        sampler = resolve_latent_sampler(pl_module, self.sample_latents, self.latent_dim)
        generate = self.generate if self.generate is not None else pl_module
        with rng_isolated(pl_module.device), eval_mode(pl_module):
            latents = latents_for(
                sampler, indices, self.num_samples, self.batch_size, seed=self.seed
            )
            images = torch.cat(
                [generate(chunk) for chunk in latents.split(self.batch_size)]
            ).float()
        grids["candidates"] = image_grid(images, nrow=shown)
        return grids


# ---------------------------------------------------------------------------------- quality


class QualityMonitor(ScheduledAnalysis):
    """Log the global SWD (per level and averaged) and the discriminator score at a cadence.

    Scalars ``{tag_prefix}/swd_{resolution}``, ``{tag_prefix}/swd_avg`` (×10³, lower is better,
    :class:`~gan_dissect_callbacks.metrics.swd.SlicedWassersteinDistance` with the real
    descriptors kept between checks) and ``{tag_prefix}/discriminator_score`` (mean discriminator
    output on the same generated images; comparable only within a run) on the batch step axis.
    Every check uses the same seeded latents. Computed and logged on rank 0 only.

    Args:
        real_images: real images (see the module docstring); ``None`` takes them from the
            training dataloader.
        every_n_train_steps: measure after every ``n`` training batches.
        on_train_start: also measure before the first batch.
        num_samples: generated images per measurement.
        num_real: real images (default: ``num_samples``).
        batch_size: images per forward pass.
        seed: seed of the latents and of the SWD.
        discriminator: a layer name, a callable, ``None`` (no score) or ``"auto"``
            (``pl_module.discriminator`` if there is one).
        num_descriptors_per_image: SWD neighbourhoods per image per level (paper: 128).
        num_projections: SWD random directions per level (paper: 512).
        tag_prefix: prefix of the logged tags.
        sample_latents: ``(n, generator) → latents``; found on the module when omitted.
        latent_dim: latent size, when the module does not say.
        generate: latents → images in ``[-1, 1]``; by default the module's ``forward``.
        raise_on_error: re-raise failures instead of warning and going on.
    """

    _what = "check"
    #: One entry per measurement: ``{"step": n, "swd_avg": ..., ...}``.
    history: list[dict[str, Any]]

    def __init__(
        self,
        real_images: RealImages | None = None,
        *,
        every_n_train_steps: int = 500,
        on_train_start: bool = True,
        num_samples: int = 256,
        num_real: int | None = None,
        batch_size: int = 64,
        seed: int = 0,
        discriminator: str | Callable[[Tensor], Tensor] | None = _AUTO,
        num_descriptors_per_image: int = 128,
        num_projections: int = 512,
        tag_prefix: str = "quality",
        sample_latents: LatentSampler | None = None,
        latent_dim: int | None = None,
        generate: Callable[[Tensor], Tensor] | None = None,
        raise_on_error: bool = False,
    ) -> None:
        _check_real_source(real_images)
        for name, value in (
            ("every_n_train_steps", every_n_train_steps),
            ("num_samples", num_samples),
            ("batch_size", batch_size),
            ("num_descriptors_per_image", num_descriptors_per_image),
            ("num_projections", num_projections),
        ):
            _check_int(value, name)
        if num_real is not None:
            _check_int(num_real, "num_real")
        if not isinstance(tag_prefix, str) or not tag_prefix:
            raise ValueError(
                f"Expected argument `tag_prefix` to be a non-empty string, but got {tag_prefix!r}."
            )
        super().__init__(
            every_n_train_steps=every_n_train_steps,
            on_train_start=on_train_start,
            raise_on_error=raise_on_error,
        )
        self.real_images = real_images
        self.num_samples = num_samples
        self.num_real = num_real if num_real is not None else num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.discriminator = discriminator
        self.num_descriptors_per_image = num_descriptors_per_image
        self.num_projections = num_projections
        self.tag_prefix = tag_prefix
        self.sample_latents = sample_latents
        self.latent_dim = latent_dim
        self.generate = generate
        self._swd: SlicedWassersteinDistance | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(tag_prefix=self.tag_prefix)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        resolve_latent_sampler(pl_module, self.sample_latents, self.latent_dim)
        _resolve_discriminator(pl_module, self.discriminator)  # an unknown name fails here

    def _analyse(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int) -> None:
        if not trainer.is_global_zero:  # rank 0 measures alone; the others have nothing to do
            return
        values = self._compute(trainer, pl_module)
        entry: dict[str, Any] = {"step": step, **values}
        self.history.append(entry)
        _log_scalars(trainer, {f"{self.tag_prefix}/{k}": v for k, v in values.items()}, step)

    def _compute(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        if self._swd is None:
            real = _draw_real_images(self.real_images, trainer, pl_module, self.num_real, self.seed)
            # Keep every descriptor (no reservoir) and sync nothing: rank 0 measures alone.
            self._swd = SlicedWassersteinDistance(
                image_size=real.shape[-1],
                max_descriptors=max(len(real), self.num_samples) * self.num_descriptors_per_image,
                num_descriptors_per_image=self.num_descriptors_per_image,
                num_projections=self.num_projections,
                seed=self.seed,
                reset_real_features=False,
                sync_on_compute=False,
            )
            for chunk in real.split(self.batch_size):
                self._swd.update(chunk, real=True)
        swd = self._swd
        discriminator = _resolve_discriminator(pl_module, self.discriminator)
        score = DiscriminatorScore(sync_on_compute=False) if discriminator is not None else None
        sampler = resolve_latent_sampler(pl_module, self.sample_latents, self.latent_dim)
        generate = self.generate if self.generate is not None else pl_module
        # A discriminator outside the module is put in eval mode too (the same one: no-op).
        outside = discriminator if isinstance(discriminator, nn.Module) else nn.Identity()
        with (
            rng_isolated(pl_module.device),
            eval_mode(pl_module),
            eval_mode(outside),
            torch.no_grad(),
        ):
            for batch in iterate_samples(
                sampler, self.num_samples, self.batch_size, seed=self.seed
            ):
                images = generate(batch.latents).float()
                swd.update(images.cpu(), real=False)
                if score is not None and discriminator is not None:
                    score.update(discriminator(images).float().cpu())
        values = {name: float(v) for name, v in swd.compute().items()}
        swd.reset()
        if score is not None:
            values["discriminator_score"] = float(score.compute())
        return values
