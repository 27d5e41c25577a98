"""Interpretable-unit counts mean what the paper means under both threshold rules: on a generator
with 12 true concept units among 64, no noise unit is ever counted."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from gan_dissect_callbacks.engines.dissection import DissectionReport, dissect
from tests.engines.synthetic import exact_segmenter

NUM_UNITS, CONCEPT_UNITS = 64, 12


class Concepts(nn.Module):
    """Units 0..11 paint concept ``u % 3`` (a latent-placed rectangle) with a latent gain; the other
    52 units are smooth noise from latent dimensions the concepts never read."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.register_buffer("freq", torch.rand(NUM_UNITS - CONCEPT_UNITS, 2, generator=g) * 2)
        self.register_buffer("phase", torch.rand(NUM_UNITS - CONCEPT_UNITS, generator=g) * 6)

    def masks(self, z: Tensor) -> Tensor:
        b, grid = z.shape[0], torch.arange(8, dtype=z.dtype)
        out = []
        for c in range(3):
            y0, x0 = (torch.sigmoid(z[:, 4 * c : 4 * c + 2]) * 5).floor().unbind(1)
            h, w = (1 + torch.sigmoid(z[:, 4 * c + 2 : 4 * c + 4]) * 3).floor().unbind(1)
            ys = (grid.view(1, 8, 1) >= y0.view(b, 1, 1)) & (
                grid.view(1, 8, 1) < (y0 + h).view(b, 1, 1)
            )
            xs = (grid.view(1, 1, 8) >= x0.view(b, 1, 1)) & (
                grid.view(1, 1, 8) < (x0 + w).view(b, 1, 1)
            )
            out.append(ys & xs)
        return torch.stack(out, 1).to(z.dtype)  # [B, 3, 8, 8]

    def forward(self, z: Tensor) -> Tensor:
        b, grid = z.shape[0], torch.arange(8, dtype=z.dtype)
        m = self.masks(z)
        gain = 1 + torch.sigmoid(z[:, 12:24]).view(b, CONCEPT_UNITS, 1, 1)
        concept_units = m[:, [u % 3 for u in range(CONCEPT_UNITS)]] * gain
        wave = (
            self.freq[:, 0].view(1, -1, 1, 1) * grid.view(1, 1, 8, 1)
            + self.freq[:, 1].view(1, -1, 1, 1) * grid.view(1, 1, 1, 8)
            + self.phase.view(1, -1, 1, 1)
            + z[:, 24:25].view(b, 1, 1, 1) * 3
        )
        noise = torch.sin(wave) + 0.3 * z[:, 25:26].view(b, 1, 1, 1)
        return torch.cat([concept_units, noise], 1)


class ConceptGenerator(nn.Module):
    latent_dim = 26

    def __init__(self) -> None:
        super().__init__()
        self.features = Concepts()

    def forward(self, z: Tensor) -> Tensor:
        present = self.features.masks(z)  # the picture shows exactly the three concepts
        self.features(z)  # the hooked layer runs on the same latents
        return nn.functional.interpolate(present, scale_factor=4.0, mode="nearest") * 2 - 1


@pytest.fixture(scope="module")
def reports() -> dict[str, DissectionReport]:
    gen = ConceptGenerator().eval()
    return {
        rule: dissect(
            gen, ["features"], exact_segmenter(), rule=rule, num_samples=256, batch_size=64, top_k=0
        )
        for rule in ("quantile", "iqr")
    }


@pytest.mark.parametrize("rule", ["quantile", "iqr"])
def test_no_noise_unit_is_ever_counted(reports, rule):
    counted = [u.unit for u in reports[rule].layers["features"].interpretable_units]
    assert all(u < CONCEPT_UNITS for u in counted), f"noise units counted: {counted}"


def test_under_iqr_the_concept_units_are_counted_with_their_concepts(reports):
    layer = reports["iqr"].layers["features"]
    names = reports["iqr"].vocabulary.names
    assert sorted(u.unit for u in layer.interpretable_units) == list(range(CONCEPT_UNITS))
    for u in layer.interpretable_units:
        assert u.concept == names[u.unit % 3] and u.iqr > reports["iqr"].iqr_cutoff


def test_without_the_iqr_cutoff_noise_units_would_be_counted(reports):
    # The reason for the cut-off: under the IQR rule a noise unit's best threshold sits near its
    # minimum, so its mask covers nearly every pixel and its IoU is the concept's pixel share.
    layer = reports["iqr"].layers["features"]
    noise = [u for u in layer.units if u.unit >= CONCEPT_UNITS]
    above_iou = [u for u in noise if u.iou > reports["iqr"].iou_cutoff]
    assert above_iou, "the test generator no longer exercises the cut-off"
    assert all(u.iqr <= reports["iqr"].iqr_cutoff and not u.interpretable for u in above_iou)


def test_the_cutoff_is_in_the_report_and_its_json(reports):
    report = reports["iqr"]
    assert report.iqr_cutoff == 0.01
    again = DissectionReport.from_json(report.to_json())
    assert again == report and again.to_dict()["iqr_cutoff"] == 0.01
