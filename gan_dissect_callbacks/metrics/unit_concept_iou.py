"""Streaming unit × concept IoU: the dissection metric.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> metric = UnitConceptIoU(3, 2, num_levels=10, num_dense_levels=5, calibration_samples=4)
    >>> for _ in range(4):
    ...     activations = torch.rand(2, 3, 4, 4, generator=g)
    ...     metric.update(activations, torch.rand(2, 2, 16, 16, generator=g) > 0.7)
    >>> result = metric.compute()
    >>> result.num_samples, result.iou_quantile.shape, metric.pending_samples
    (8, torch.Size([3, 2]), 0)
    >>> metric.state_nbytes == 8 * 3 * 16 * 3 + 4 * 3 * 15 + 8 * 2 + 16
    True
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torchmetrics import Metric

from gan_dissect_callbacks.functional.threshold import _check_levels, snap_levels
from gan_dissect_callbacks.functional.unit_concept import (
    UnitConceptCounts,
    UnitConceptIoUResult,
    _calibrated_update,
    _check_inputs,
    _level_bins,
    _LevelBins,
    _unit_concept_update,
    unit_concept_compute,
    unit_concept_levels,
)

__all__ = ["DEFAULT_CALIBRATION_SAMPLES", "UnitConceptIoU"]

#: Samples the candidate levels are calibrated on unless ``calibration_samples`` says otherwise.
DEFAULT_CALIBRATION_SAMPLES = 128


def _identical_levels(stacked: Tensor) -> Tensor:
    """Reduce levels gathered from processes (or two merged metrics): they must agree.

    Uncalibrated levels (all NaN: a metric that has seen no data) defer to calibrated ones.
    """
    calibrated = ~torch.isnan(stacked).flatten(1).any(dim=1)
    if not bool(calibrated.any()):
        return stacked[0].clone()
    chosen = stacked[calibrated]
    if not bool((chosen == chosen[0]).all()):
        raise RuntimeError(
            "Expected identical `levels` in every process / merged metric, but they differ. Counts "
            "taken at different levels cannot be added: let all processes calibrate together on "
            "their first update (levels are broadcast from rank 0) or pass the same `levels=`."
        )
    return chosen[0].clone()


class _Opaque:
    """Carries a result through torchmetrics' compute wrapper untouched."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _positive_int(name: str, value: object, low: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"Expected argument `{name}` to be an int >= {low}, but got {value!r}.")
    return value


# The count states whose default is one expanded zero (UnitConceptIoU._add_count_state).
_COUNT_STATES = ("unit_bins", "joint_bins")


class UnitConceptIoU(Metric):
    """IoU of every unit's thresholded activation with every concept, streamed over batches.

    Each :meth:`update` takes activations ``[B, U, h, w]`` of one layer and concept masks
    ``[B, C, H, W]``, upsamples the activations to ``H×W`` (bilinear on pixel centres, edges
    replicated) and adds pixel counts at fixed per-unit candidate levels. :meth:`compute`
    returns IoUs under both threshold rules of GAN dissection (quantile and IQR) as a
    :class:`~gan_dissect_callbacks.functional.unit_concept.UnitConceptIoUResult`.

    **Levels** are calibrated on the first ``calibration_samples`` samples (quantiles ``1 - f``,
    ``f`` log-spaced in ``[min_fraction, 1]``, plus ``num_dense_levels`` around ``quantile``),
    or set with :meth:`calibrate` or ``levels=``. Until then batches wait in a buffer and are
    counted once the levels exist (:meth:`compute` includes them), in the pass that calibrates
    the levels (one pass over the buffer does both). One batch is not enough: a
    unit's top 1% varies ~2× between batches of 32 images, and levels calibrated on one batch
    miss the stream's quantile. Under ``torch.distributed`` rank 0's levels are broadcast and
    rank 0's sample count decides when, so all ranks must call :meth:`update` (and
    :meth:`calibrate`) together until the levels are set. :meth:`reset` forgets calibrated
    levels (the next pass recalibrates) but keeps explicit ones.

    **States** are fixed-size and summed across processes, so results are exact under any split
    of the data into batches and processes. With ``L`` levels they take
    ``8·U·(L+1)·(C+1) + 4·U·L + 8·C + 16`` bytes (:attr:`state_nbytes`) however many samples are
    streamed: 46.7 MiB for 512 units, 356 levels and 32 concepts (torchmetrics keeps a second
    copy of each state to reset to). Before calibration the buffer adds ``U·h·w·4 + C·H·W``
    bytes per waiting sample (32 MiB for 128 samples of 512 units at 8×8 and 32 concepts at
    64×64).

    Args:
        num_units: ``U``, channels of the dissected layer.
        num_concepts: ``C``, channels of the concept masks.
        quantile: the quantile rule's target, in (0, 1); 0.99 keeps each unit's top 1%.
        num_levels: log-spaced candidate levels per unit (the paper used 100).
        min_fraction: smallest fraction of pixels above a log-spaced candidate, in (0, 1).
        num_dense_levels: extra candidates with fractions of pixels above log-spaced from
            ``(1-quantile)/3`` to ``3·(1-quantile)``, so the quantile threshold is precise; 0 for
            none.
        min_concept_fraction: concepts covering a smaller fraction of all pixels are ignored
            (IoU and IQR 0), in [0, 1].
        calibration_samples: samples (on rank 0) the levels are calibrated on; at least the
            first batch is used.
        segmentation_size: ``(H, W)`` every batch of masks must have; ``None`` takes the first
            batch's size.
        levels: ``[U, L]`` explicit sorted levels instead of calibrating; they are snapped to
            each unit's power-of-two grid (moving each by less than 1/16384 of the unit's range).
        kwargs: :class:`torchmetrics.Metric` options (``process_group``, ``sync_on_compute`` ...).

    Raises:
        ValueError: for any argument out of range, naming it.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    levels: Tensor
    unit_bins: Tensor
    joint_bins: Tensor
    concept_pixels: Tensor
    num_pixels: Tensor
    num_samples: Tensor
    pending_activations: list[Tensor]
    pending_masks: list[Tensor]

    def __init__(
        self,
        num_units: int,
        num_concepts: int,
        *,
        quantile: float = 0.99,
        num_levels: int = 100,
        min_fraction: float = 1e-3,
        num_dense_levels: int = 256,
        min_concept_fraction: float = 1e-4,
        calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES,
        segmentation_size: Sequence[int] | None = None,
        levels: Tensor | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("dist_sync_on_step"):
            raise ValueError(
                "Expected `dist_sync_on_step=False`: per-batch results are local to each process."
            )
        super().__init__(**kwargs)
        self.num_units = _positive_int("num_units", num_units)
        self.num_concepts = _positive_int("num_concepts", num_concepts)
        if not isinstance(quantile, float) or not 0 < quantile < 1:
            raise ValueError(
                f"Expected argument `quantile` to be a float in (0, 1), but got {quantile!r}."
            )
        self.quantile = quantile
        self.num_levels = _positive_int("num_levels", num_levels)
        if not isinstance(min_fraction, float) or not 0 < min_fraction < 1:
            raise ValueError(
                "Expected argument `min_fraction` to be a float in (0, 1), "
                f"but got {min_fraction!r}."
            )
        self.min_fraction = min_fraction
        self.num_dense_levels = _positive_int("num_dense_levels", num_dense_levels, low=0)
        if not isinstance(min_concept_fraction, (int, float)) or not 0 <= min_concept_fraction <= 1:
            raise ValueError(
                "Expected argument `min_concept_fraction` to be a float in [0, 1], "
                f"but got {min_concept_fraction!r}."
            )
        self.min_concept_fraction = float(min_concept_fraction)
        self.calibration_samples = _positive_int("calibration_samples", calibration_samples)
        self.segmentation_size = self._check_size(segmentation_size)
        if levels is None:
            total_levels = num_levels + num_dense_levels
            default = torch.full((num_units, total_levels), float("nan"))
        else:
            if not isinstance(levels, Tensor) or levels.ndim != 2 or levels.shape[0] != num_units:
                shape = list(levels.shape) if isinstance(levels, Tensor) else type(levels).__name__
                raise ValueError(
                    f"Expected argument `levels` of shape [{num_units}, L], but got {shape}."
                )
            _check_levels(levels)
            default = snap_levels(levels.detach().float().cpu())
            total_levels = default.shape[1]
        self.add_state("levels", default, dist_reduce_fx=_identical_levels, persistent=True)
        unit_bins, joint_bins = _COUNT_STATES
        self._add_count_state(unit_bins, (num_units, total_levels + 1))
        self._add_count_state(joint_bins, (num_units, total_levels + 1, num_concepts))
        self.add_state(
            "concept_pixels", torch.zeros(num_concepts, dtype=torch.int64), "sum", persistent=True
        )
        self.add_state("num_pixels", torch.zeros((), dtype=torch.int64), "sum", persistent=True)
        self.add_state("num_samples", torch.zeros((), dtype=torch.int64), "sum", persistent=True)
        # Batches waiting for the levels (masks as uint8: every backend gathers those).
        self.add_state("pending_activations", [], dist_reduce_fx="cat", persistent=True)
        self.add_state("pending_masks", [], dist_reduce_fx="cat", persistent=True)
        self._bins_key: tuple[int, int, torch.device] | None = None
        self._bins: _LevelBins | None = None

    def _add_count_state(self, name: str, shape: tuple[int, ...]) -> None:
        """``add_state(name, zeros(shape), "sum")`` without a second tensor of zeros.

        torchmetrics keeps a deep copy of each state's default for :meth:`reset`: for the joint
        counts that is ``8·U·(L+1)·C`` bytes (209 MiB at 512 units and 150 concepts) and ~0.1 s
        of copying per metric. A zero expanded to the shape is the same default in 8 bytes;
        ``reset`` clones it into a fresh tensor of zeros.
        """
        zero = torch.zeros((), dtype=torch.int64)
        self.add_state(name, zero, "sum", persistent=True)
        setattr(self, name, torch.zeros(shape, dtype=torch.int64))
        self._defaults[name] = zero.expand(shape)

    def _apply(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> UnitConceptIoU:
        """Move or convert the states as torchmetrics does, the count defaults kept expanded.

        ``fn`` sees each count default as its one zero: applied to the expanded view, ``.to()``
        would build the whole tensor of zeros (and copy it to the device).
        """
        defaults = self._defaults
        for name in _COUNT_STATES:
            default = defaults[name]
            assert isinstance(default, Tensor)
            defaults[name] = default.new_zeros(())
        try:
            this = super()._apply(fn, *args, **kwargs)
        finally:
            for name in _COUNT_STATES:
                zero, value = defaults[name], getattr(self, name)
                assert isinstance(zero, Tensor)
                defaults[name] = zero.expand(value.shape)
        assert this is self  # torchmetrics returns the metric itself
        return self

    @staticmethod
    def _check_size(size: Sequence[int] | None) -> tuple[int, int] | None:
        if size is None:
            return None
        if (
            not isinstance(size, Sequence)
            or len(size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)
        ):
            raise ValueError(
                "Expected argument `segmentation_size` to be None or a pair of positive ints "
                f"(H, W), but got {size!r}."
            )
        return int(size[0]), int(size[1])

    @property
    def calibrated(self) -> bool:
        """Whether the levels are set (given, by :meth:`calibrate` or by calibrating on data)."""
        return not bool(torch.isnan(self.levels).any())

    @property
    def state_nbytes(self) -> int:
        """Bytes of the fixed-size states: ``8·U·(L+1)·(C+1) + 4·U·L + 8·C + 16``."""
        return sum(
            value.nbytes
            for value in (getattr(self, name) for name in self._defaults)
            if isinstance(value, Tensor)
        )

    @property
    def pending_samples(self) -> int:
        """Samples waiting in the calibration buffer (0 once the levels are set)."""
        pending = self._pending()
        return 0 if pending is None else int(pending[0].shape[0])

    def calibrate(self, activations: Tensor) -> None:
        """Set the candidate levels from a batch of activations ``[B, U, h, w]``.

        Activations are upsampled to ``segmentation_size`` first when it is known. Under
        ``torch.distributed`` every rank must call this together: rank 0 calibrates and
        broadcasts its levels, and a failure there is raised on every rank. Batches already
        waiting for levels are counted at these levels.

        Raises:
            RuntimeError: if samples were already counted (call :meth:`reset` first).
        """
        if int(self.num_samples) > 0:
            raise RuntimeError(
                "Expected `calibrate()` before the first `update()` or right after `reset()`, but "
                f"{int(self.num_samples)} samples are already counted at the current levels."
            )
        if (
            not isinstance(activations, Tensor)
            or activations.ndim != 4
            or activations.shape[1] != self.num_units
        ):
            shape = (
                list(activations.shape)
                if isinstance(activations, Tensor)
                else type(activations).__name__
            )
            raise ValueError(
                f"Expected argument `activations` of shape [B, {self.num_units}, h, w], "
                f"but got {shape}."
            )
        self._calibrate_together(activations.to(self.device))

    def _calibrated_levels(self, activations: Tensor) -> Tensor:
        return unit_concept_levels(activations, self.segmentation_size, **self._level_settings())

    def _level_settings(self) -> dict[str, Any]:
        return {
            "quantile": self.quantile,
            "num_levels": self.num_levels,
            "min_fraction": self.min_fraction,
            "num_dense_levels": self.num_dense_levels,
        }

    def _calibrate_and_add(self, activations: Tensor, masks: Tensor) -> Tensor:
        """Levels calibrated on the samples, which are counted at them into the states.

        One counting pass does both (``_calibrated_update``). The states hold no counts before
        the levels exist; if counting fails they are emptied again, so a later calibration
        starts clean.
        """
        try:
            levels, _ = _calibrated_update(
                activations, masks, out=self._counts(), **self._level_settings()
            )
        except BaseException:
            for state in self._counts().__dict__.values():
                state.zero_()
            raise
        return levels

    def _distributed(self) -> bool:
        return (
            dist.is_available()
            and dist.is_initialized()
            and dist.get_world_size(self.process_group) > 1
        )

    def _rank_zero(self) -> int:
        return 0 if self.process_group is None else dist.get_global_rank(self.process_group, 0)

    def _calibrate_together(self, activations: Tensor, masks: Tensor | None = None) -> bool:
        """Set the levels from ``activations``: on rank 0, then broadcast to every rank.

        Rank 0 first tells every rank whether calibrating worked, so a failure there (an
        out-of-memory error, say) is raised on every rank instead of leaving the others
        waiting in the broadcast of levels that never come. With ``masks`` of the same samples,
        the process that calibrates also counts them at the new levels in the same pass and
        returns ``True``; the others return ``False`` and count their own samples.
        """

        def calibrated() -> Tensor:
            if masks is None:
                return self._calibrated_levels(activations)
            return self._calibrate_and_add(activations, masks)

        if not self._distributed():
            self.levels = calibrated().to(self.levels.device).contiguous()
            return masks is not None
        shape = (self.num_units, self.num_levels + self.num_dense_levels)
        levels = torch.empty(shape, dtype=torch.float32, device=self.levels.device)
        failure: Exception | None = None
        source = self._rank_zero()
        if dist.get_rank() == source:
            try:
                levels = calibrated().to(levels.device).contiguous()
            except Exception as err:  # reported to every rank below, then re-raised here
                failure = err
        failed = torch.tensor(int(failure is not None), device=self.levels.device)
        dist.broadcast(failed, src=source, group=self.process_group)
        if failure is not None:
            raise failure
        if int(failed):
            raise RuntimeError(
                "Expected the levels from process 0, but calibrating them failed there (see its "
                "error); this process stopped too rather than wait for them."
            )
        dist.broadcast(levels, src=source, group=self.process_group)
        self.levels = levels
        return masks is not None and dist.get_rank() == source

    def _level_bins(self) -> _LevelBins:
        key = (self.levels.data_ptr(), self.levels._version, self.levels.device)
        if self._bins is None or self._bins_key != key:
            self._bins = _level_bins(self.levels)
            self._bins_key = key
        return self._bins

    def _pending(self) -> tuple[Tensor, Tensor] | None:
        """The waiting batches as one batch, or ``None``; after a sync the lists are tensors."""
        activations: list[Tensor] | Tensor = self.pending_activations
        masks: list[Tensor] | Tensor = self.pending_masks
        if isinstance(activations, list):
            if not activations:
                return None
            activations, masks = torch.cat(activations), torch.cat(list(masks))
        assert isinstance(masks, Tensor)
        if activations.numel() == 0:
            return None
        return activations.to(self.device, torch.float32), masks.to(self.device) != 0

    def _ready_to_calibrate(self) -> bool:
        """Whether rank 0 (or this process) has buffered enough samples."""
        waiting = torch.tensor(
            sum(a.shape[0] for a in self.pending_activations), device=self.device
        )
        if self._distributed():
            dist.broadcast(waiting, src=self._rank_zero(), group=self.process_group)
        return int(waiting) >= self.calibration_samples

    def _add(self, activations: Tensor, masks: Tensor) -> None:
        # Into the states in place: no second [U, L+1, C] count tensor per batch.
        _unit_concept_update(activations, masks, self._level_bins(), out=self._counts())

    def update(self, activations: Tensor, masks: Tensor) -> None:
        """Count one batch (or buffer it until the levels are calibrated).

        Args:
            activations: ``[B, U, h, w]`` finite float activations of the dissected layer.
            masks: ``[B, C, H, W]`` bool concept masks of the same samples.

        Raises:
            TypeError: for non-tensors or wrong dtypes.
            ValueError: for wrong shapes, mismatched batch/unit/concept counts or sizes, an empty
                batch, or NaN/Inf activations.
        """
        _check_inputs(
            activations,
            masks,
            num_units=self.num_units,
            num_concepts=self.num_concepts,
            size=self.segmentation_size,
        )
        if self.segmentation_size is None:
            self.segmentation_size = (int(masks.shape[2]), int(masks.shape[3]))
        activations = activations.detach().to(self.device, torch.float32)
        masks = masks.to(self.device)
        self._update_counted(activations, masks)

    def _update_counted(self, activations: Tensor, masks: Tensor) -> None:
        if not isinstance(self.pending_activations, list):  # one tensor after a sync or load
            waiting = self._pending()
            self.pending_activations = [] if waiting is None else [waiting[0]]
            self.pending_masks = [] if waiting is None else [waiting[1].to(torch.uint8)]
        if self.calibrated and not self.pending_activations:
            self._add(activations, masks)
            return
        self.pending_activations.append(activations)
        self.pending_masks.append(masks.to(torch.uint8))
        if self.calibrated or self._ready_to_calibrate():
            pending = self._pending()
            assert pending is not None
            if self.calibrated or not self._calibrate_together(*pending):
                self._add(*pending)
            self.pending_activations, self.pending_masks = [], []

    def _counts(self) -> UnitConceptCounts:
        return UnitConceptCounts(
            self.unit_bins, self.joint_bins, self.concept_pixels, self.num_pixels, self.num_samples
        )

    def compute(self) -> UnitConceptIoUResult:
        """Scores of all data seen so far (on all processes), buffered batches included.

        Raises:
            ValueError: if no sample was seen.
        """
        pending = self._pending()
        if int(self.num_samples) == 0 and pending is None:
            raise ValueError(
                "Expected at least one sample, but `UnitConceptIoU` has seen none; "
                "call update() first."
            )
        levels, counts = self.levels, self._counts()
        if pending is not None:
            # Pure: calibrate on everything waiting (identical on all ranks after the sync).
            if self.calibrated:
                counts = counts + _unit_concept_update(*pending, _level_bins(levels))
            else:
                levels, waiting = _calibrated_update(*pending, **self._level_settings())
                counts = counts + waiting
        return unit_concept_compute(
            counts,
            levels.clone(),
            quantile=self.quantile,
            min_concept_fraction=self.min_concept_fraction,
        )

    def _wrap_compute(self, compute: Callable) -> Callable:
        # torchmetrics squeezes one-element tensors of a compute() result (which would change
        # shapes when U or C is 1) and rejects frozen dataclasses; keep its caching and
        # cross-process sync but pass our result through unchanged.
        inner = super()._wrap_compute(lambda *args, **kwargs: _Opaque(compute(*args, **kwargs)))

        @functools.wraps(compute)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            return inner(*args, **kwargs).value

        return wrapped

    def forward(self, activations: Tensor, masks: Tensor) -> UnitConceptIoUResult:
        """Accumulate a batch like :meth:`update` and return the scores of that batch alone.

        The batch is scored at the metric's levels (while they are still being calibrated, at
        the levels the buffered data would give). This counts the batch a second time:
        :meth:`update` is the fast path. The batch result is local to this process.
        """
        self.update(activations, masks)
        if self.calibrated:
            levels = self.levels
        else:
            pending = self._pending()
            assert pending is not None
            levels = self._calibrated_levels(pending[0])
        counts = _unit_concept_update(
            activations.detach().to(self.device, torch.float32),
            masks.to(self.device),
            _level_bins(levels),
        )
        result = unit_concept_compute(
            counts,
            levels.clone(),
            quantile=self.quantile,
            min_concept_fraction=self.min_concept_fraction,
        )
        self._forward_cache = result  # type: ignore[assignment]
        return result
