"""The ADE20K vocabulary: 150 names in the benchmark's order, the category map, label matching."""

from __future__ import annotations

from collections import Counter

import pytest

from gan_dissect_callbacks.segmenters.ade20k import (
    ADE20K_MATERIALS,
    ADE20K_NAMES,
    ADE20K_PARTS,
    ADE20K_VOCABULARY,
    lookup_ade20k,
)
from gan_dissect_callbacks.segmenters.vocabulary import Concept, ConceptVocabulary


def test_150_unique_names_in_the_benchmark_order() -> None:
    assert len(ADE20K_NAMES) == 150 == len(set(ADE20K_NAMES))
    assert ADE20K_VOCABULARY.names == ADE20K_NAMES
    # Spot checks at both ends and in the middle of the standard order.
    expected = {
        0: "wall",
        1: "building",
        2: "sky",
        4: "tree",
        8: "windowpane",
        9: "grass",
        12: "person",
        14: "door",
        20: "car",
        21: "water",
        44: "chest of drawers",
        58: "screen door",
        89: "television receiver",
        104: "fountain",
        130: "screen",
        138: "ashcan",
        141: "crt screen",
        147: "glass",
        149: "flag",
    }
    assert {i: ADE20K_NAMES[i] for i in expected} == expected


def test_category_map() -> None:
    counts = Counter(ADE20K_VOCABULARY.concept_categories())
    assert counts == {"object": 133, "part": 11, "material": 6}
    assert ADE20K_VOCABULARY.categories == ("object", "part", "material")
    assert sorted(ADE20K_MATERIALS) == ["earth", "grass", "land", "rock", "sand", "water"]
    assert (ADE20K_PARTS | ADE20K_MATERIALS).issubset(ADE20K_NAMES)
    for name in ("wall", "floor", "ceiling", "road", "sky", "sea", "glass", "bed"):
        assert ADE20K_VOCABULARY.category_of(name) == "object", name
    for name in ("windowpane", "door", "column", "awning", "step"):
        assert ADE20K_VOCABULARY.category_of(name) == "part", name


def test_vocabulary_round_trips_through_json() -> None:
    assert ConceptVocabulary.from_list(ADE20K_VOCABULARY.to_list()) == ADE20K_VOCABULARY


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("wall", "wall"),
        ("bed ", "bed"),  # as in the label maps of the public SegFormer/UperNet checkpoints
        ("Swivel_Chair", "swivel chair"),
        ("windowpane;window", "windowpane"),
        ("person;individual;someone;somebody;mortal;soul", "person"),
        ("chest;of;drawers;chest;bureau;dresser", "chest of drawers"),
        ("screen;door;screen", "screen door"),  # not "screen"
        ("screen;silver;screen;projection;screen", "screen"),
        ("crt;screen", "crt screen"),
        ("chest of drawers, chest, bureau, dresser", "chest of drawers"),
        ("glass, drinking glass", "glass"),
    ],
)
def test_lookup_matches_label_spellings(label: str, expected: str) -> None:
    assert lookup_ade20k(label) == Concept(expected, ADE20K_VOCABULARY.category_of(expected))


@pytest.mark.parametrize(
    "label", ["robot", "", " ; ", "window", "car seat", "television;television;receiver"]
)
def test_lookup_rejects_other_labels(label: str) -> None:
    assert lookup_ade20k(label) is None


def test_every_name_looks_itself_up() -> None:
    assert [lookup_ade20k(n) for n in ADE20K_NAMES] == list(ADE20K_VOCABULARY)
