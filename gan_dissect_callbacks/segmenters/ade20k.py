"""The 150 concepts of ADE20K SceneParsing (the ADE20K benchmark of scene segmenters), in order.

Channel ``i`` of a segmenter trained on the benchmark (UPerNet, SegFormer, ...) is concept ``i``
of :data:`ADE20K_VOCABULARY`. Names are the short names most checkpoints carry in their label
maps (``"windowpane"``, ``"ashcan"``, ``"crt screen"``); note that ``"glass"`` is a drinking
glass, not the material, and ``"light"`` a light source.

Categories, decided as follows (ADE20K itself labels every one of the 150 an object):

- **material** (6): classes that name a substance with no shape of its own, which a generator
  draws as texture filling a region: ``grass``, ``earth``, ``water``, ``rock``, ``sand``,
  ``land``. The paper's segmenter read its materials (wood, glass, fabric, ...) from a separate
  surface dataset that these 150 classes lack; without this choice an ADE20K dissection would
  report no material units at all.
- **part** (11): classes that in ADE20K's full annotation are mostly parts of a larger object:
  ``windowpane``, ``door``, ``railing``, ``base``, ``column``, ``screen door``, ``countertop``,
  ``awning``, ``bannister``, ``step``, ``crt screen``. Parts of a building are what GANs of
  churches, towers and bedrooms draw as parts.
- **object** (133): everything else, including the layout "stuff" of a scene (``wall``,
  ``floor``, ``ceiling``, ``road``, ``sidewalk``, ``sky``) and bodies of water (``sea``,
  ``river``, ``lake``, ``waterfall``). These have an extent and a place in the scene rather than
  being a substance, and they are objects in the object annotations the paper's segmenter was
  trained on.

Example:
    >>> len(ADE20K_VOCABULARY), ADE20K_VOCABULARY.names[:4]
    (150, ('wall', 'building', 'sky', 'floor'))
    >>> ADE20K_VOCABULARY.category_of("windowpane"), ADE20K_VOCABULARY.category_of("grass")
    ('part', 'material')
    >>> lookup_ade20k("chest;of;drawers;chest;bureau;dresser")
    Concept(name='chest of drawers', category='object')
"""

from __future__ import annotations

import re

from gan_dissect_callbacks.segmenters.vocabulary import Concept, ConceptVocabulary

__all__ = ["ADE20K_MATERIALS", "ADE20K_NAMES", "ADE20K_PARTS", "ADE20K_VOCABULARY", "lookup_ade20k"]

#: The 150 class names of ADE20K SceneParsing, in channel order (class 0, "other", excluded).
ADE20K_NAMES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree",
    "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door",
    "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf",
    "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock",
    "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers",
    "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway",
    "case", "pool table", "pillow", "screen door", "stairway",
    "river", "bridge", "bookcase", "blind", "coffee table",
    "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer",
    "swivel chair", "boat", "bar", "arcade machine", "hovel",
    "bus", "towel", "light", "truck", "tower",
    "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land",
    "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool",
    "stool", "barrel", "basket", "waterfall", "tent",
    "bag", "minibike", "cradle", "oven", "ball",
    "food", "step", "tank", "trade name", "microwave",
    "pot", "animal", "bicycle", "lake", "dishwasher",
    "screen", "blanket", "sculpture", "hood", "sconce",
    "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board",
    "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip

#: Substances without a shape of their own (see the module docstring for the reasoning).
ADE20K_MATERIALS: frozenset[str] = frozenset({"grass", "earth", "water", "rock", "sand", "land"})

#: Classes that ADE20K's full annotation mostly records as parts of a larger object.
ADE20K_PARTS: frozenset[str] = frozenset(
    {
        "windowpane",
        "door",
        "railing",
        "base",
        "column",
        "screen door",
        "countertop",
        "awning",
        "bannister",
        "step",
        "crt screen",
    }
)


def _category(name: str) -> str:
    if name in ADE20K_MATERIALS:
        return "material"
    return "part" if name in ADE20K_PARTS else "object"


#: The 150 ADE20K concepts with their categories, in channel order.
ADE20K_VOCABULARY: ConceptVocabulary = ConceptVocabulary(
    Concept(name, _category(name)) for name in ADE20K_NAMES
)

_BY_NAME: dict[str, Concept] = {c.name: c for c in ADE20K_VOCABULARY}
# Longest first, so that "screen door" wins over "screen" as a prefix.
_LONGEST_FIRST: tuple[str, ...] = tuple(sorted(_BY_NAME, key=len, reverse=True))


def lookup_ade20k(label: str) -> Concept | None:
    """The ADE20K concept that a checkpoint's class label names, or ``None``.

    Label maps spell the classes in several ways: ``"bed "`` with a trailing space, or the
    dataset's synonym lists ``"windowpane;window"`` and ``"pool;table;billiard;table"`` (spaces
    inside a name turned into ``;``). A label matches when, lower-cased and stripped, it is a
    name, its first comma-separated synonym is a name, or, in ``;``-separated lists, its words
    start with a name (the longest such name).

    Args:
        label: a class label, e.g. from a model config's ``id2label``.

    Returns:
        The matching concept of :data:`ADE20K_VOCABULARY`, or ``None``.

    Example:
        >>> lookup_ade20k("Bed "), lookup_ade20k("screen;door;screen"), lookup_ade20k("robot")
        (Concept(name='bed', category='object'), Concept(name='screen door', category='part'), None)
    """
    text = label.strip().lower().replace("_", " ")
    if text in _BY_NAME:
        return _BY_NAME[text]
    words = [w.strip() for w in re.split(r"[;,]", text) if w.strip()]
    if not words:
        return None
    if ";" not in text:
        return _BY_NAME.get(words[0])
    # "screen;door;screen" is "screen door", not "screen": match whole words, longest name first.
    joined = " ".join(words)
    for name in _LONGEST_FIRST:
        if joined == name or joined.startswith(name + " "):
            return _BY_NAME[name]
    return None
