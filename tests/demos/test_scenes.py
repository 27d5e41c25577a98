"""The toy world's scenes: shapes, ranges, determinism and the concept hierarchy."""

import pytest
import torch

from gan_dissect_callbacks.demos.scenes import (
    MATERIALS,
    OBJECTS,
    PART_OF,
    PARTS,
    SCENE_VOCABULARY,
    render_scenes,
)


@pytest.fixture(scope="module")
def scenes():
    return render_scenes(256, 32, generator=torch.Generator().manual_seed(7))


def channel(masks, name):
    return masks[:, SCENE_VOCABULARY.index(name)]


def test_vocabulary_has_three_categories_and_fourteen_concepts():
    assert len(SCENE_VOCABULARY) == 14
    assert SCENE_VOCABULARY.categories == ("object", "part", "material")
    assert [SCENE_VOCABULARY.category_of(n) for n in OBJECTS] == ["object"] * len(OBJECTS)
    assert [SCENE_VOCABULARY.category_of(n) for n in PARTS] == ["part"] * len(PARTS)
    assert [SCENE_VOCABULARY.category_of(n) for n in MATERIALS] == ["material"] * len(MATERIALS)


def test_shapes_dtypes_and_range(scenes):
    images, masks = scenes
    assert images.shape == (256, 3, 32, 32) and images.dtype == torch.float32
    assert masks.shape == (256, 14, 32, 32) and masks.dtype == torch.bool
    assert images.min() >= -1 and images.max() <= 1


def test_objects_partition_every_pixel(scenes):
    _, masks = scenes
    objects = torch.stack([channel(masks, n) for n in OBJECTS], 1)
    assert torch.equal(objects.sum(1), torch.ones_like(objects[:, 0], dtype=torch.long))


@pytest.mark.parametrize(("child", "parent"), sorted(PART_OF.items()))
def test_parts_and_materials_lie_inside_their_object(scenes, child, parent):
    _, masks = scenes
    inside = channel(masks, child) & ~channel(masks, parent)
    assert not inside.any(), f"{child} pixels outside {parent}"
    assert channel(masks, child).any(), f"{child} never drawn"


def test_house_is_exactly_its_parts_and_brick(scenes):
    _, masks = scenes
    union = sum(channel(masks, n).long() for n in ("roof", "window", "door", "brick"))
    assert torch.equal(union, channel(masks, "house").long())  # disjoint and covering


def test_tree_is_trunk_or_crown_and_ground_is_grass_or_water(scenes):
    _, masks = scenes
    tree = channel(masks, "trunk").long() + channel(masks, "crown").long()
    assert torch.equal(tree, channel(masks, "tree").long())
    ground = channel(masks, "grass").long() + channel(masks, "water").long()
    assert torch.equal(ground, channel(masks, "ground").long())


def test_every_concept_occurs_often_enough_to_be_learnt(scenes):
    _, masks = scenes
    share_of_scenes = masks.flatten(2).any(-1).float().mean(0)
    for name, share in zip(SCENE_VOCABULARY.names, share_of_scenes.tolist()):
        assert share > 0.3, f"{name} appears in only {share:.0%} of scenes"


def test_same_seed_same_scenes_and_different_seed_differs():
    a = render_scenes(8, 32, generator=torch.Generator().manual_seed(3))
    b = render_scenes(8, 32, generator=torch.Generator().manual_seed(3))
    c = render_scenes(8, 32, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_other_sizes_render_with_the_same_hierarchy():
    images, masks = render_scenes(16, 64, generator=torch.Generator().manual_seed(0))
    assert images.shape == (16, 3, 64, 64)
    assert not (channel(masks, "window") & ~channel(masks, "house")).any()


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"num_scenes": 0}, "num_scenes"), ({"num_scenes": 2, "size": 8}, "size")]
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        render_scenes(**kwargs)
