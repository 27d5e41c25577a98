"""Concept vocabularies: the names a segmenter can recognise and the category of each.

A *concept* is something a segmenter can find in an image (``"sky"``, ``"window"``); its
*category* groups concepts the way the paper's unit-class charts do (object, part, material;
a segmenter may add more, e.g. color).

Example:
    >>> vocab = ConceptVocabulary.from_pairs([("sky", "object"), ("window", "part")])
    >>> len(vocab), vocab.index("window"), vocab.categories
    (2, 1, ('object', 'part'))
    >>> vocab.category_of("sky")
    'object'
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

__all__ = ["DEFAULT_CATEGORIES", "Concept", "ConceptVocabulary"]

#: The categories of the paper, in the order charts use them.
DEFAULT_CATEGORIES: tuple[str, ...] = ("object", "part", "material")


@dataclass(frozen=True)
class Concept:
    """One concept a segmenter can recognise.

    Args:
        name: unique name, e.g. ``"window"``.
        category: the concept's category, e.g. ``"part"``.
    """

    name: str
    category: str


class ConceptVocabulary(Sequence[Concept]):
    """An ordered, immutable list of concepts; position ``i`` is channel ``i`` of a segmentation.

    Args:
        concepts: the concepts in channel order. Names must be unique and non-empty.

    Raises:
        ValueError: if the list is empty, a name is repeated or a name/category is empty.
    """

    def __init__(self, concepts: Iterable[Concept]) -> None:
        self._concepts: tuple[Concept, ...] = tuple(concepts)
        if not self._concepts:
            raise ValueError("Expected at least one concept in the vocabulary, but got none.")
        names = [c.name for c in self._concepts]
        duplicates = sorted(name for name, count in Counter(names).items() if count > 1)
        if duplicates:
            raise ValueError(f"Expected unique concept names, but got duplicates {duplicates}.")
        for c in self._concepts:
            if not c.name or not c.category:
                raise ValueError(f"Expected a non-empty name and category, but got {c!r}.")
        self._index = {c.name: i for i, c in enumerate(self._concepts)}

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, str]]) -> ConceptVocabulary:
        """Build a vocabulary from ``(name, category)`` pairs."""
        return cls(Concept(name, category) for name, category in pairs)

    def __len__(self) -> int:
        return len(self._concepts)

    def __getitem__(self, i: int) -> Concept:  # type: ignore[override]
        return self._concepts[i]

    def __iter__(self) -> Iterator[Concept]:
        return iter(self._concepts)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ConceptVocabulary) and self._concepts == other._concepts

    def __hash__(self) -> int:
        return hash(self._concepts)

    def __repr__(self) -> str:
        return f"ConceptVocabulary({len(self)} concepts, categories={list(self.categories)})"

    @property
    def names(self) -> tuple[str, ...]:
        """Concept names in channel order."""
        return tuple(c.name for c in self._concepts)

    @property
    def categories(self) -> tuple[str, ...]:
        """Distinct categories, known ones first in the paper's order, then others sorted."""
        present = {c.category for c in self._concepts}
        known = [c for c in DEFAULT_CATEGORIES if c in present]
        return tuple(known + sorted(present - set(known)))

    def concept_categories(self) -> tuple[str, ...]:
        """The category of every concept, in channel order."""
        return tuple(c.category for c in self._concepts)

    def index(self, name: str) -> int:  # type: ignore[override]
        """Channel index of concept ``name``.

        Raises:
            KeyError: naming the unknown concept and listing the known ones.
        """
        try:
            return self._index[name]
        except KeyError:
            raise KeyError(
                f"Unknown concept {name!r}. Known concepts: {', '.join(self.names)}."
            ) from None

    def category_of(self, name: str) -> str:
        """Category of concept ``name``."""
        return self._concepts[self.index(name)].category

    def to_list(self) -> list[dict[str, str]]:
        """A JSON-friendly list of ``{"name", "category"}`` dicts."""
        return [{"name": c.name, "category": c.category} for c in self._concepts]

    @classmethod
    def from_list(cls, items: Iterable[dict[str, str]]) -> ConceptVocabulary:
        """Inverse of :meth:`to_list`."""
        return cls(Concept(d["name"], d["category"]) for d in items)
