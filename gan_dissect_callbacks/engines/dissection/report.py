"""What a dissection returns: per unit its concept, IoU and threshold; per layer the counts.

:class:`DissectionReport` round-trips through JSON (:meth:`~DissectionReport.to_json` /
:meth:`~DissectionReport.from_json`, format ``gan_dissect_callbacks.dissection/1``). The example
images it may carry (:class:`UnitExamples`, for the unit galleries) are not part of the JSON, of
equality or of the repr: they are pictures of the report, not its findings.

Example:
    >>> from gan_dissect_callbacks.segmenters.vocabulary import ConceptVocabulary
    >>> vocab = ConceptVocabulary.from_pairs([("sky", "object"), ("window", "part")])
    >>> units = [UnitReport(0, "sky", "object", 0.3, 1.5, 0.1, True),
    ...          UnitReport(1, "window", "part", 0.01, 0.5, 0.0, False)]
    >>> layer = LayerReport("layer3", 2, units, [[0.3, 0.0], [0.0, 0.01]])
    >>> report = DissectionReport({"layer3": layer}, vocab, 64, 0, "quantile", 0.99, 0.04,
    ...                           [0.5, 0.1], step=12)
    >>> report.summary()
    'layer3: 2 units, 1 object, 0 part'
    >>> DissectionReport.from_json(report.to_json()) == report
    True
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

from gan_dissect_callbacks.arguments import ThresholdRule
from gan_dissect_callbacks.segmenters.vocabulary import ConceptVocabulary

if TYPE_CHECKING:
    from gan_dissect_callbacks.functional.unit_concept import UnitConceptIoUResult

__all__ = ["DissectionReport", "LayerReport", "UnitExamples", "UnitReport", "layer_report"]

#: The ``"format"`` field of a report's JSON.
REPORT_FORMAT = "gan_dissect_callbacks.dissection/1"


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
        interpretable: ``iou`` exceeds the report's IoU cut-off and, under the IQR rule, ``iqr``
            exceeds its IQR cut-off too (the 2019 code's pair of tests: a unit whose mask carries
            no information about its concept is not counted, however large the mask).
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


_UNIT_FIELDS = tuple(f.name for f in fields(UnitReport))


def _unit_dict(unit: UnitReport) -> dict[str, Any]:
    # `dataclasses.asdict` deep-copies every value: ~0.1 s per report of a few hundred units.
    out = {name: getattr(unit, name) for name in _UNIT_FIELDS}
    out["top_samples"], out["top_activations"] = list(unit.top_samples), list(unit.top_activations)
    return out


@dataclass(frozen=True)
class UnitExamples:
    """A unit's top-activating samples and where it fires on them, for its gallery row.

    Attributes:
        unit: channel index in its layer.
        images: ``[k, C, H, W]`` float images in ``[-1, 1]`` on the CPU, the unit's
            ``top_samples`` in order.
        masks: ``[k, H, W]`` bool on the CPU: the unit's featuremap upsampled to the image size
            and thresholded at its ``threshold``.
    """

    unit: int
    images: Tensor
    masks: Tensor


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

    def best_units(self, n: int) -> list[UnitReport]:
        """The ``n`` units a gallery shows: interpretable ones first, each group by IoU."""
        return sorted(self.units, key=lambda u: (not u.interpretable, -u.iou))[:n]

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


#: The 2019 code's IQR cut-off: under the IQR rule a unit also needs ``IQR > 0.01`` to count.
DEFAULT_IQR_CUTOFF = 0.01


@dataclass(frozen=True)
class DissectionReport:
    """The result of :func:`~gan_dissect_callbacks.engines.dissection.dissect`.

    JSON round-trips through :meth:`to_json`/:meth:`from_json`. ``examples`` (per layer, the
    gallery units' :class:`UnitExamples`, when the dissection was asked for them with
    ``top_n``) is left out of the JSON, of ``==`` and of the repr.
    """

    layers: dict[str, LayerReport]
    vocabulary: ConceptVocabulary
    num_samples: int
    seed: int
    rule: str
    quantile: float
    iou_cutoff: float
    concept_fraction: list[float]
    step: int | None = None
    iqr_cutoff: float = DEFAULT_IQR_CUTOFF
    examples: dict[str, list[UnitExamples]] = field(default_factory=dict, compare=False, repr=False)

    def summary(self) -> str:
        """The per-layer lines of :meth:`LayerReport.summary`."""
        cats = self.vocabulary.categories
        return "\n".join(layer.summary(cats) for layer in self.layers.values())

    def labels(self, layer: str) -> list[str | None]:
        """Per unit of ``layer``: its concept if interpretable, else ``None``."""
        return [u.concept if u.interpretable else None for u in self.layers[layer].units]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (without the example images)."""
        return {
            "format": REPORT_FORMAT,
            "step": self.step,
            "num_samples": self.num_samples,
            "seed": self.seed,
            "rule": self.rule,
            "quantile": self.quantile,
            "iou_cutoff": self.iou_cutoff,
            "iqr_cutoff": self.iqr_cutoff,
            "vocabulary": self.vocabulary.to_list(),
            "concept_fraction": self.concept_fraction,
            "layers": {
                name: {
                    "layer": layer.layer,
                    "num_units": layer.num_units,
                    "summary": layer.summary(self.vocabulary.categories),
                    "counts_by_category": layer.counts_by_category(self.vocabulary.categories),
                    "counts_by_concept": layer.counts_by_concept(),
                    "units": [_unit_dict(u) for u in layer.units],
                    "iou": layer.iou,
                }
                for name, layer in self.layers.items()
            },
        }

    def to_json(self) -> str:
        """The report as JSON text (files are written by :mod:`~.reporting.writing`)."""
        return json.dumps(self.to_dict(), indent=1)

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
            iqr_cutoff=data.get("iqr_cutoff", DEFAULT_IQR_CUTOFF),
        )

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> DissectionReport:
        """Read a report from JSON text or a file path."""
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            text = Path(text_or_path).read_text()
        return cls.from_dict(json.loads(text))


def layer_report(
    name: str,
    result: UnitConceptIoUResult,
    vocabulary: ConceptVocabulary,
    *,
    rule: ThresholdRule,
    iou_cutoff: float,
    iqr_cutoff: float = 0.0,
    top: tuple[list[list[float]], list[list[int]]] | None = None,
) -> LayerReport:
    """The :class:`LayerReport` of a layer's computed metric under ``rule``.

    Args:
        name: the layer.
        result: the layer's unit × concept metric, computed.
        vocabulary: the concepts of the metric's columns.
        rule: which threshold labels the units (``"quantile"`` or ``"iqr"``).
        iou_cutoff: a unit is interpretable when its best IoU exceeds this...
        iqr_cutoff: ... and, under the IQR rule, when its IQR with that concept exceeds this.
        top: per unit, its top activations and their sample indices (``None``: none kept).
    """
    concept_idx, best_iou = result.best_concept(rule)
    iou_table = result.iou_quantile if rule == "quantile" else result.iou_iqr
    categories = vocabulary.concept_categories()
    units = []
    for u in range(iou_table.shape[0]):
        c = int(concept_idx[u])
        threshold = (
            result.threshold_quantile[u] if rule == "quantile" else result.threshold_iqr[u, c]
        )
        units.append(
            UnitReport(
                unit=u,
                concept=vocabulary.names[c],
                category=categories[c],
                iou=float(best_iou[u]),
                threshold=float(threshold),
                iqr=float(result.iqr[u, c]),
                interpretable=bool(best_iou[u] > iou_cutoff)
                and (rule != "iqr" or float(result.iqr[u, c]) > iqr_cutoff),
                top_samples=top[1][u] if top is not None else [],
                top_activations=top[0][u] if top is not None else [],
            )
        )
    return LayerReport(
        layer=name, num_units=iou_table.shape[0], units=units, iou=iou_table.tolist()
    )
