"""The dissection engine: which units of which layers match which concepts.

:func:`dissect` samples seeded latents, runs each batch once through the generator (capturing
every requested layer in the same pass) and once through the segmenter, streams activations and
masks into one :class:`~gan_dissect_callbacks.metrics.unit_concept_iou.UnitConceptIoU` per layer,
keeps each unit's top-k activating samples, and returns a :class:`DissectionReport`. It needs no
Lightning, so it also dissects a saved checkpoint post hoc; the callbacks call it at their cadence.

Under ``torch.distributed`` each process takes every ``world_size``-th sample; the count states
are summed and the top-k lists merged, so every process gets the single-process result.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn

from gan_dissect_callbacks.engines.sampling import (
    LatentSampler,
    iterate_samples,
    latents_for,
    resolve_latent_sampler,
    rng_isolated,
)
from gan_dissect_callbacks.instrumentation import capture_activations, eval_mode, resolve_layer
from gan_dissect_callbacks.metrics.unit_concept_iou import UnitConceptIoU
from gan_dissect_callbacks.reporting.writing import write_atomically
from gan_dissect_callbacks.segmenters.base import Segmenter, check_images, checked_segment
from gan_dissect_callbacks.segmenters.vocabulary import ConceptVocabulary

__all__ = ["DissectionReport", "LayerReport", "UnitReport", "dissect"]

ThresholdRule = Literal["quantile", "iqr"]
_RULES = ("quantile", "iqr")


@dataclass(frozen=True)
class UnitReport:
    """What dissection found for one unit.

    Attributes:
        unit: channel index in its layer.
        concept: best-matching concept (by IoU under the report's threshold rule).
        category: that concept's category.
        iou: IoU of the unit's thresholded mask with that concept.
        threshold: the unit's activation threshold (for that concept under the IQR rule).
        iqr: information quality ratio of the unit's mask with that concept at its IQR threshold.
        interpretable: ``iou`` exceeds the report's IoU cut-off.
        top_samples: global indices of the samples that activate the unit most (spatial max).
        top_activations: those spatial maxima.
    """

    unit: int
    concept: str
    category: str
    iou: float
    threshold: float
    iqr: float
    interpretable: bool
    top_samples: list[int] = field(default_factory=list)
    top_activations: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class LayerReport:
    """Dissection of one layer: its units, and the counts the paper's charts show."""

    layer: str
    num_units: int
    units: list[UnitReport]
    iou: list[list[float]]
    """``[U][C]`` IoU of every unit with every concept under the report's rule."""

    @property
    def interpretable_units(self) -> list[UnitReport]:
        """Units whose best IoU exceeds the cut-off, best first."""
        return sorted((u for u in self.units if u.interpretable), key=lambda u: -u.iou)

    def counts_by_category(self, categories: Sequence[str] = ()) -> dict[str, int]:
        """Number of interpretable units per category (categories given first, zero included)."""
        counts = dict.fromkeys(categories, 0)
        for u in self.interpretable_units:
            counts[u.category] = counts.get(u.category, 0) + 1
        return counts

    def counts_by_concept(self) -> dict[str, int]:
        """Number of interpretable units per concept, most frequent first."""
        counts: dict[str, int] = {}
        for u in self.interpretable_units:
            counts[u.concept] = counts.get(u.concept, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def summary(self, categories: Sequence[str] = ()) -> str:
        """One line as in the paper: ``layer4: 512 units, 86 object, 149 part, 10 material``."""
        parts = [f"{n} {c}" for c, n in self.counts_by_category(categories).items()]
        return f"{self.layer}: {self.num_units} units, " + ", ".join(parts)


@dataclass(frozen=True)
class DissectionReport:
    """The result of :func:`dissect`; JSON round-trips through :meth:`to_json`/:meth:`from_json`."""

    layers: dict[str, LayerReport]
    vocabulary: ConceptVocabulary
    num_samples: int
    seed: int
    rule: str
    quantile: float
    iou_cutoff: float
    concept_fraction: list[float]
    step: int | None = None

    def summary(self) -> str:
        """The per-layer lines of :meth:`LayerReport.summary`."""
        cats = self.vocabulary.categories
        return "\n".join(layer.summary(cats) for layer in self.layers.values())

    def labels(self, layer: str) -> list[str | None]:
        """Per unit of ``layer``: its concept if interpretable, else ``None``."""
        return [u.concept if u.interpretable else None for u in self.layers[layer].units]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict."""
        return {
            "format": "gan_dissect_callbacks.dissection/1",
            "step": self.step,
            "num_samples": self.num_samples,
            "seed": self.seed,
            "rule": self.rule,
            "quantile": self.quantile,
            "iou_cutoff": self.iou_cutoff,
            "vocabulary": self.vocabulary.to_list(),
            "concept_fraction": self.concept_fraction,
            "layers": {
                name: {
                    "layer": layer.layer,
                    "num_units": layer.num_units,
                    "summary": layer.summary(self.vocabulary.categories),
                    "counts_by_category": layer.counts_by_category(self.vocabulary.categories),
                    "counts_by_concept": layer.counts_by_concept(),
                    "units": [asdict(u) for u in layer.units],
                    "iou": layer.iou,
                }
                for name, layer in self.layers.items()
            },
        }

    def to_json(self, path: str | Path | None = None) -> str:
        """Serialise; when ``path`` is given also write it atomically (temp file + rename)."""
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            write_atomically(Path(path), text)
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DissectionReport:
        """Inverse of :meth:`to_dict`."""
        layers = {
            name: LayerReport(
                layer=d["layer"],
                num_units=d["num_units"],
                units=[UnitReport(**u) for u in d["units"]],
                iou=d["iou"],
            )
            for name, d in data["layers"].items()
        }
        return cls(
            layers=layers,
            vocabulary=ConceptVocabulary.from_list(data["vocabulary"]),
            num_samples=data["num_samples"],
            seed=data["seed"],
            rule=data["rule"],
            quantile=data["quantile"],
            iou_cutoff=data["iou_cutoff"],
            concept_fraction=data["concept_fraction"],
            step=data.get("step"),
        )

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> DissectionReport:
        """Read a report from JSON text or a file path."""
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            text = Path(text_or_path).read_text()
        return cls.from_dict(json.loads(text))


def _default_calibration_samples() -> int:
    import inspect

    default = inspect.signature(UnitConceptIoU).parameters["calibration_samples"].default
    return int(default)


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _merge_topk(values: Tensor, indices: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Keep the ``k`` largest per row; ties broken by the smaller sample index (deterministic)."""
    # Sort by index first, then a stable sort by value keeps the smaller index among equals.
    order = indices.argsort(dim=1, stable=True)
    values, indices = values.gather(1, order), indices.gather(1, order)
    top = values.argsort(dim=1, descending=True, stable=True)[:, :k]
    return values.gather(1, top), indices.gather(1, top)


def _gather_topk(values: Tensor, indices: Tensor, k: int) -> tuple[Tensor, Tensor]:
    _, world = _dist_info()
    if world == 1:
        return values, indices
    vs = [torch.empty_like(values) for _ in range(world)]
    ix = [torch.empty_like(indices) for _ in range(world)]
    dist.all_gather(vs, values.contiguous())
    dist.all_gather(ix, indices.contiguous())
    return _merge_topk(torch.cat(vs, 1), torch.cat(ix, 1), k)


def dissect(
    model: nn.Module,
    layers: Sequence[str],
    segmenter: Segmenter,
    *,
    generate: Callable[[Tensor], Tensor] | None = None,
    sample_latents: LatentSampler | None = None,
    latent_dim: int | None = None,
    num_samples: int = 512,
    batch_size: int = 64,
    seed: int = 0,
    rule: ThresholdRule = "quantile",
    quantile: float = 0.99,
    iou_cutoff: float = 0.04,
    top_k: int = 8,
    metric_kwargs: dict[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
    step: int | None = None,
) -> DissectionReport:
    """Dissect ``layers`` of ``model``: the best concept, IoU and threshold of every unit.

    Args:
        model: the module whose layers are named (e.g. a LightningModule: ``"generator.layer3"``).
        layers: dotted layer names whose outputs are ``[B, U, h, w]`` featuremaps.
        segmenter: gives concept masks of the generated images (see
            :class:`~gan_dissect_callbacks.segmenters.base.Segmenter`).
        generate: latents → images in ``[-1, 1]``; defaults to ``model`` itself.
        sample_latents: ``(n, generator) → latents``; found on the model when omitted (see
            :func:`~gan_dissect_callbacks.engines.sampling.resolve_latent_sampler`).
        latent_dim: size of standard-normal latents, when the model does not say.
        num_samples: how many generated images to dissect (split across processes).
        batch_size: images per forward pass.
        seed: seed of the analysis's own latent generator (the global RNG is untouched).
        rule: threshold rule used for the labels: ``"quantile"`` (top ``1 - quantile`` of
            each unit's activations) or ``"iqr"`` (the paper's IQR-maximising threshold).
        quantile: the quantile of the quantile rule.
        iou_cutoff: a unit is interpretable when its best IoU exceeds this.
        top_k: how many top-activating samples to keep per unit.
        metric_kwargs: extra arguments of :class:`UnitConceptIoU` (e.g. ``num_levels``).
        progress: called as ``progress(done, total)`` after each batch.
        step: the training step to stamp on the report.

    Returns:
        A :class:`DissectionReport`.

    The model is put in eval mode for the pass and every submodule's mode is restored; no
    gradients are computed; the global RNG streams are not advanced.
    """
    if rule not in _RULES:
        raise ValueError(f"Expected argument `rule` to be one of {_RULES}, but got {rule!r}.")
    if not layers:
        raise ValueError("Expected at least one layer name in `layers`, but got none.")
    if not 0.0 < quantile < 1.0:
        raise ValueError(
            f"Expected argument `quantile` to be a float in (0, 1), but got {quantile}."
        )
    if num_samples < 1:
        raise ValueError(f"Expected argument `num_samples` to be ≥ 1, but got {num_samples}.")
    if top_k < 0:
        raise ValueError(f"Expected argument `top_k` to be ≥ 0, but got {top_k}.")
    for name in layers:
        resolve_layer(model, name)  # fails early, listing valid names
    generate_fn = generate if generate is not None else model
    sampler = resolve_latent_sampler(model, sample_latents, latent_dim)
    vocabulary = segmenter.vocabulary
    rank, world = _dist_info()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))

    metrics: dict[str, UnitConceptIoU] = {}
    topk: dict[str, tuple[Tensor, Tensor]] = {}
    done = 0

    def new_metric(name: str, r: Tensor, masks: Tensor) -> UnitConceptIoU:
        if r.ndim != 4:
            raise ValueError(
                f"Expected layer {name!r} to output a featuremap [B, U, h, w], but got "
                f"shape {tuple(r.shape)}. Dissect a convolutional layer."
            )
        return UnitConceptIoU(
            r.shape[1],
            len(vocabulary),
            quantile=quantile,
            segmentation_size=tuple(masks.shape[-2:]),
            **(metric_kwargs or {}),
        ).to(r.device)

    with rng_isolated(device), eval_mode(model), torch.no_grad():
        if world > 1:
            # A single process calibrates the candidate levels on the batches it buffers first
            # (all of them once at least `calibration_samples` are waiting). Under DDP each rank
            # holds only a share of those batches, so every rank draws them all to calibrate on:
            # the levels, and so every count, are then exactly the single-process ones.
            wanted = int(
                (metric_kwargs or {}).get("calibration_samples", _default_calibration_samples())
            )
            num_cal = min(num_samples, -(-wanted // batch_size) * batch_size)
            first = latents_for(sampler, range(num_cal), num_samples, batch_size, seed=seed)
            chunks: dict[str, list[Tensor]] = {name: [] for name in layers}
            for start in range(0, num_cal, batch_size):
                with capture_activations(model, list(layers)) as acts:
                    images = generate_fn(first[start : start + batch_size])
                masks = checked_segment(segmenter, images)
                for name in layers:
                    if name not in metrics:
                        metrics[name] = new_metric(name, acts[name], masks)
                    chunks[name].append(acts[name].float())
            for name in layers:
                metrics[name].calibrate(torch.cat(chunks[name]))
            del chunks
        for batch in iterate_samples(
            sampler, num_samples, batch_size, seed=seed, rank=rank, world_size=world
        ):
            with capture_activations(model, list(layers)) as acts:
                images = generate_fn(batch.latents)
            check_images(images)
            masks = checked_segment(segmenter, images)
            for name in layers:
                r = acts[name]
                if name not in metrics:
                    metrics[name] = new_metric(name, r, masks)
                metrics[name].update(r.float(), masks)
                if top_k:
                    peak = r.float().amax(dim=(2, 3)).T.cpu()  # [U, B]
                    idx = batch.indices.view(1, -1).expand_as(peak)
                    if name in topk:
                        peak = torch.cat([topk[name][0], peak], 1)
                        idx = torch.cat([topk[name][1], idx], 1)
                    topk[name] = _merge_topk(peak, idx, top_k)
            done += len(batch.indices)
            if progress is not None:
                progress(done * world, num_samples)

    if not metrics:
        raise ValueError(
            f"No samples reached this process (rank {rank} of {world}); use num_samples ≥ "
            f"world size ({world})."
        )
    reports: dict[str, LayerReport] = {}
    concept_fraction: list[float] = []
    categories = vocabulary.concept_categories()
    for name in layers:
        result = metrics[name].compute()
        concept_fraction = result.concept_fraction.tolist()
        concept_idx, best_iou = result.best_concept(rule)
        iou_table = result.iou_quantile if rule == "quantile" else result.iou_iqr
        units_topk = (
            _gather_topk(*topk[name], top_k)
            if top_k
            else (torch.empty(0, 0), torch.empty(0, 0, dtype=torch.long))
        )
        unit_reports = []
        for u in range(iou_table.shape[0]):
            c = int(concept_idx[u])
            threshold = (
                float(result.threshold_quantile[u])
                if rule == "quantile"
                else float(result.threshold_iqr[u, c])
            )
            unit_reports.append(
                UnitReport(
                    unit=u,
                    concept=vocabulary.names[c],
                    category=categories[c],
                    iou=float(best_iou[u]),
                    threshold=threshold,
                    iqr=float(result.iqr[u, c]),
                    interpretable=bool(best_iou[u] > iou_cutoff),
                    top_samples=units_topk[1][u].tolist() if top_k else [],
                    top_activations=units_topk[0][u].tolist() if top_k else [],
                )
            )
        reports[name] = LayerReport(
            layer=name, num_units=iou_table.shape[0], units=unit_reports, iou=iou_table.tolist()
        )
    return DissectionReport(
        layers=reports,
        vocabulary=vocabulary,
        num_samples=num_samples,
        seed=seed,
        rule=rule,
        quantile=quantile,
        iou_cutoff=iou_cutoff,
        concept_fraction=concept_fraction,
        step=step,
    )
