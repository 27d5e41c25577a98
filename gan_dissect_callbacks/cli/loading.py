"""Loading what ``gan-dissect`` dissects: a generator from a checkpoint or a factory, a segmenter.

torch is imported by the functions that need it, not by this module, so that the parser (which
reads :data:`DEFAULT_CHECKPOINT_CLASS`) stays quick to import.

Example:
    >>> load_object("gan_dissect_callbacks.demos.gan:SceneGAN").__name__
    'SceneGAN'
    >>> load_object("gan_dissect_callbacks.demos.gan.SceneGAN")
    Traceback (most recent call last):
    ...
    ValueError: Expected a 'package.module:name' string such as \
'gan_dissect_callbacks.demos.pretrained:load_pretrained_scene_gan', but got \
'gan_dissect_callbacks.demos.gan.SceneGAN'.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

    from gan_dissect_callbacks.engines.artifacts.pruning import PruningMask
    from gan_dissect_callbacks.engines.generator import AnalysedGenerator

__all__ = [
    "DEFAULT_CHECKPOINT_CLASS",
    "OBJECT_SPEC",
    "apply_saved_pruning",
    "load_generator",
    "load_object",
    "load_segmenter",
    "move_segmenter",
    "select_generator",
]

#: The LightningModule that ``load_from_checkpoint`` uses when ``--module`` is not given.
DEFAULT_CHECKPOINT_CLASS = "gan_dissect_callbacks.demos.gan:SceneGAN"

#: What a ``package.module:name`` string looks like (``name`` may be dotted).
OBJECT_SPEC = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def load_object(spec: str, argument: str = "the object") -> Any:
    """Import ``"package.module:name"`` (``name`` may be dotted: ``"module:Class.method"``).

    Args:
        spec: the module to import and the attribute to read from it, separated by ``:``.
        argument: what the string is, for error messages (e.g. ``"--segmenter"``).

    Returns:
        The attribute.

    Raises:
        ValueError: if ``spec`` is not of the form ``package.module:name``.
        ImportError: if the module cannot be imported or has no such attribute.
    """
    if not isinstance(spec, str) or not OBJECT_SPEC.fullmatch(spec):
        raise ValueError(
            "Expected a 'package.module:name' string such as "
            f"'gan_dissect_callbacks.demos.pretrained:load_pretrained_scene_gan', but got {spec!r}."
        )
    module_name, _, attribute = spec.partition(":")
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise ImportError(
            f"Could not import module {module_name!r} named by {argument} {spec!r}: {err}. Check "
            "the spelling and that the package is installed (or on PYTHONPATH)."
        ) from err
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise ImportError(
                f"Module {module_name!r} has no attribute {attribute!r} (from {argument} {spec!r})."
            )
        found = getattr(found, part)
    return found


def load_generator(
    target: str, *, checkpoint_class: str | None = None
) -> tuple[nn.Module, int | None]:
    """Load the model to dissect from a checkpoint path or a ``package.module:callable`` factory.

    Args:
        target: a Lightning checkpoint file, loaded with ``load_from_checkpoint`` of
            ``checkpoint_class``; or ``"package.module:callable"``, called without arguments, that
            returns an ``nn.Module`` (or an ``nn.Module`` instance itself).
        checkpoint_class: ``"package.module:ClassName"`` of the LightningModule that saved the
            checkpoint; :data:`DEFAULT_CHECKPOINT_CLASS` when ``None``. Only for checkpoints.

    Returns:
        ``(model, step)``: the model on the CPU in eval mode, and the checkpoint's number of
        training batches (:func:`checkpoint_step`; ``None`` for a factory).

    Raises:
        FileNotFoundError: if ``target`` looks like a path but no such file exists.
        ValueError: if ``target`` is neither, the checkpoint does not load, ``checkpoint_class``
            is given with a factory, or the factory does not give an ``nn.Module``.
        ImportError: if a module or attribute named cannot be imported.
        TypeError: if ``checkpoint_class`` has no ``load_from_checkpoint``.
    """
    path = Path(target)
    if path.is_dir():
        raise FileNotFoundError(
            f"Expected CHECKPOINT_OR_FACTORY to be a checkpoint file, but {target!r} is a "
            "directory. Pass the .ckpt file inside it."
        )
    if path.is_file():
        return _load_checkpoint(path, checkpoint_class or DEFAULT_CHECKPOINT_CLASS)
    if OBJECT_SPEC.fullmatch(target):
        if checkpoint_class is not None:
            raise ValueError(
                f"--module applies to checkpoints only, but {target!r} is a factory; drop --module "
                "or pass a checkpoint file."
            )
        return _load_factory(target), None
    if path.suffix or "/" in target or "\\" in target:
        raise FileNotFoundError(f"No checkpoint file at {target!r}.")
    raise ValueError(
        "Expected CHECKPOINT_OR_FACTORY to be a Lightning checkpoint file or a "
        f"'package.module:callable' factory, but {target!r} is neither (no such file, and not "
        "of the form package.module:callable)."
    )


def _load_checkpoint(path: Path, class_spec: str) -> tuple[nn.Module, int | None]:
    from torch import nn

    from gan_dissect_callbacks.checkpoints import checkpoint_step, read_checkpoint

    cls = load_object(class_spec, "--module")
    if not callable(getattr(cls, "load_from_checkpoint", None)):
        raise TypeError(
            f"Expected --module {class_spec!r} to be a LightningModule class with "
            f"`load_from_checkpoint`, but {cls!r} has none."
        )
    try:
        step = checkpoint_step(read_checkpoint(path))
        model = cls.load_from_checkpoint(path, map_location="cpu")
    except Exception as err:
        raise ValueError(
            f"Could not load the checkpoint {str(path)!r} with {class_spec}.load_from_checkpoint: "
            f"{type(err).__name__}: {err}. Pass the LightningModule class that saved it with "
            "--module package.module:ClassName."
        ) from err
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"Expected --module {class_spec!r} to load an nn.Module from the checkpoint, but it "
            f"gave a {type(model).__name__}. Pass the LightningModule class that saved it."
        )
    return model.eval(), step


def _load_factory(spec: str) -> nn.Module:
    from torch import nn

    factory = load_object(spec, "CHECKPOINT_OR_FACTORY")
    model = factory if isinstance(factory, nn.Module) else None
    if model is None:
        if not callable(factory):
            raise ValueError(
                f"Expected {spec!r} to name a callable that returns an nn.Module, but it is a "
                f"{type(factory).__name__}."
            )
        model = factory()
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"Expected the factory {spec!r} to return an nn.Module, but it returned a "
            f"{type(model).__name__}."
        )
    return model.eval()


def select_generator(
    model: nn.Module, name: str | None = None, *, latent_dim: int | None = None
) -> AnalysedGenerator:
    """The generator to dissect: ``model`` itself, or its submodule ``name`` (``--generator``).

    Args:
        model: the loaded module.
        name: a dotted submodule name such as ``"generator_ema"``; layers are then named
            relative to it. ``None``: ``model`` itself.
        latent_dim: ``--latent-dim``, for a module that does not say how to draw latents.

    Raises:
        ValueError: if ``name`` is not a submodule of ``model`` (listing the valid names), or no
            way to draw latents is found (naming ``--latent-dim``).

    Example:
        >>> from gan_dissect_callbacks.demos.gan import SceneGAN
        >>> select_generator(SceneGAN(latent_dim=8, width=4), "generator").layer_names()[:2]
        ['layer1', 'layer1.0']
    """
    from gan_dissect_callbacks.engines.generator import AnalysedGenerator
    from gan_dissect_callbacks.instrumentation import resolve_layer

    if name is not None:
        try:
            resolve_layer(model, name)
        except ValueError as err:
            raise ValueError(
                f"--generator {name!r} is not a submodule of {type(model).__name__}: {err}"
            ) from err
    try:
        return AnalysedGenerator.of(model, name, latent_dim=latent_dim)
    except ValueError as err:
        raise ValueError(f"{err} On the command line: --latent-dim N.") from err


def apply_saved_pruning(
    checkpoint_path: str | Path, model: nn.Module, generator: AnalysedGenerator
) -> PruningMask | None:
    """Apply the pruning mask saved in a checkpoint, so that post hoc sees what training saw.

    :class:`~gan_dissect_callbacks.callbacks.artifact_pruning.ArtifactPruningCallback` with
    ``prune=True`` saves its mask in its checkpoint state; the forward hooks that applied it are
    not saved with the weights. The mask's layer names are those of the module the callback
    analysed: ``model`` itself, else the ``--generator`` module.

    Returns:
        The applied mask; ``None`` when the checkpoint holds none or it prunes no unit.

    Raises:
        ValueError: if the mask names layers of neither module (naming the options to fix it).
    """
    from gan_dissect_callbacks.checkpoints import read_checkpoint
    from gan_dissect_callbacks.engines.artifacts.pruning import (
        MASK_STATE_KEY,
        apply_pruning_from_checkpoint,
    )

    checkpoint = read_checkpoint(checkpoint_path)
    states = checkpoint.get("callbacks") or {}
    if not any(isinstance(s, Mapping) and MASK_STATE_KEY in s for s in states.values()):
        return None
    modules = [model] if generator.module is model else [model, generator.module]
    for module in modules:
        try:
            mask = apply_pruning_from_checkpoint(module, checkpoint)
        except ValueError as err:
            error = err
            continue
        if mask.num_pruned:
            return mask
        mask.remove()
        return None
    raise ValueError(
        f"The checkpoint's pruning mask does not fit the loaded module: {error} Pass the "
        "--generator the callback analysed (its generator=), or --no-pruning-mask."
    )


def load_segmenter(spec: str) -> Any:
    """The segmenter named on the command line: ``"toy"`` or a ``package.module:factory``.

    Args:
        spec: ``"toy"`` for the shipped toy-world segmenter
            (:func:`~gan_dissect_callbacks.demos.segmenter.load_toy_segmenter`), or a factory
            called without arguments that returns a
            :class:`~gan_dissect_callbacks.segmenters.base.Segmenter` (or a segmenter itself).

    Raises:
        ValueError, ImportError: see :func:`load_object`.
        TypeError: if the result does not implement the segmenter protocol.

    Example:
        >>> load_segmenter("toy").vocabulary.names[:3]
        ('sky', 'ground', 'sun')
    """
    from gan_dissect_callbacks.segmenters.base import Segmenter

    if spec == "toy":
        from gan_dissect_callbacks.demos.segmenter import load_toy_segmenter

        return load_toy_segmenter()
    found = load_object(spec, "--segmenter")
    # A class passes the runtime protocol check (it has the members), so classes are called too.
    if isinstance(found, type) or (callable(found) and not isinstance(found, Segmenter)):
        found = found()
    if not isinstance(found, Segmenter):
        members = ("vocabulary", "segment", "soft_segment", "segmentation_size")
        missing = [m for m in members if not hasattr(found, m)]
        raise TypeError(
            f"Expected --segmenter {spec!r} to give a segmenter ({', '.join(members)}), but "
            f"got a {type(found).__name__} that lacks {', '.join(missing)}."
        )
    return found


def move_segmenter(segmenter: Any, device: torch.device) -> None:
    """Put the segmenter's network (``segmenter.module`` or the segmenter itself) on ``device``."""
    from torch import nn

    module = getattr(segmenter, "module", None)
    if isinstance(module, nn.Module):
        module.to(device)
    elif callable(getattr(segmenter, "to", None)):
        segmenter.to(device)
