"""Step 3 of the artifact search: keep an ablation for good, as a pruning mask.

A :class:`PruningMask` is a per-layer unit mask installed as a forward hook that passes the
layer's output through the one edit rule,
:func:`~gan_dissect_callbacks.instrumentation.apply_unit_edit`; it is saved as plain values and
re-installed on a freshly loaded model with :func:`apply_pruning_from_checkpoint`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from gan_dissect_callbacks.arguments import check_name
from gan_dissect_callbacks.checkpoints import read_checkpoint
from gan_dissect_callbacks.engines.generator import AnalysedGenerator, GeneratorLike
from gan_dissect_callbacks.instrumentation import UnitEdit, apply_unit_edit, resolve_layer

__all__ = ["MASK_STATE_KEY", "PruningMask", "apply_pruning_from_checkpoint"]

#: Key under which :class:`PruningMask` state sits in a callback's checkpoint state.
MASK_STATE_KEY = "pruning_mask"


def _module_of(model: GeneratorLike) -> nn.Module:
    """The module that runs: ``model`` itself, or an :class:`AnalysedGenerator`'s ``module``."""
    return model.module if isinstance(model, AnalysedGenerator) else model


class PruningMask:
    """A persistent ablation: per layer, units whose output is set to zero on every forward pass.

    :meth:`apply` installs one forward hook per masked layer that passes the layer's output
    through :func:`~gan_dissect_callbacks.instrumentation.apply_unit_edit` with
    ``UnitEdit.ablation(units)`` — the same rule as every other edit — placed before other hooks
    so that captures see the pruned featuremap. The hooks read the mask when they run, so
    :meth:`prune` and :meth:`restore` take effect at once on an applied mask. Gradients through a
    pruned unit are zero. The state is plain values (:meth:`state_dict`), so it rides in a
    checkpoint; :func:`apply_pruning_from_checkpoint` re-applies it to a freshly loaded model.

    Args:
        units: ``{layer name: unit indices}`` to prune.

    Example:
        >>> import torch
        >>> net = nn.Sequential(nn.Identity())
        >>> mask = PruningMask({"0": [1]}).apply(net)
        >>> net(torch.ones(1, 3, 1, 1)).flatten().tolist()
        [1.0, 0.0, 1.0]
        >>> mask.state_dict()
        {'units': {'0': [1]}}
        >>> mask.remove()
        >>> net(torch.ones(1, 3, 1, 1)).flatten().tolist()
        [1.0, 1.0, 1.0]
    """

    def __init__(self, units: Mapping[str, Sequence[int]] | None = None) -> None:
        self._units: dict[str, list[int]] = {}
        self._edits: dict[tuple[str, int], UnitEdit] = {}
        self._model: nn.Module | None = None
        self._handles: dict[str, RemovableHandle] = {}
        if units is not None:
            if not isinstance(units, Mapping):
                raise TypeError(
                    "Expected argument `units` to be a mapping {layer name: unit indices}, but"
                    f" got {type(units).__name__}."
                )
            for layer, indices in units.items():
                self.prune(layer, indices)

    def __repr__(self) -> str:
        return f"PruningMask({self._units!r})"

    @property
    def layers(self) -> list[str]:
        """The layers with at least one pruned unit."""
        return [name for name, units in self._units.items() if units]

    def units(self, layer: str) -> list[int]:
        """The pruned units of ``layer`` (sorted; empty if none)."""
        return list(self._units.get(layer, []))

    @property
    def num_pruned(self) -> int:
        """Pruned units over all layers."""
        return sum(len(u) for u in self._units.values())

    @property
    def is_applied(self) -> bool:
        """Whether the hooks are installed on a model."""
        return self._model is not None

    def prune(self, layer: str, units: Sequence[int] | Tensor) -> PruningMask:
        """Add ``units`` of ``layer`` to the mask (on the model at once if applied)."""
        check_name(layer, "layer")
        values = units.tolist() if isinstance(units, Tensor) else list(units)
        bad = [u for u in values if isinstance(u, bool) or not isinstance(u, int) or u < 0]
        if bad:
            raise ValueError(
                f"Expected the units of layer {layer!r} to be int indices >= 0, but got {bad}."
            )
        self._units[layer] = sorted(set(self._units.get(layer, [])) | set(values))
        self._edits = {k: v for k, v in self._edits.items() if k[0] != layer}
        if self._model is not None and layer not in self._handles and self._units[layer]:
            self._install(self._model, layer)
        return self

    def restore(self, layer: str, units: Sequence[int] | None = None) -> PruningMask:
        """Un-prune ``units`` of ``layer`` (all of them if ``None``)."""
        keep = [] if units is None else [u for u in self._units.get(layer, []) if u not in units]
        if keep:
            self._units[layer] = keep
        else:
            self._units.pop(layer, None)
            handle = self._handles.pop(layer, None)
            if handle is not None:
                handle.remove()
        self._edits = {k: v for k, v in self._edits.items() if k[0] != layer}
        return self

    def clear(self) -> PruningMask:
        """Un-prune every unit (the hooks go; the mask stays attached to its model)."""
        for layer in list(self._units):
            self.restore(layer)
        return self

    def _edit(self, layer: str, num_units: int) -> UnitEdit:
        key = (layer, num_units)
        if key not in self._edits:
            self._edits[key] = UnitEdit.ablation(self._units[layer], num_units)
        return self._edits[key]

    def _install(self, model: nn.Module, layer: str) -> None:
        module = resolve_layer(model, layer)

        def hook(_module: nn.Module, _inputs: Any, output: Any) -> Tensor | None:
            if not self._units.get(layer):
                return None
            if not isinstance(output, Tensor) or output.ndim != 4:
                what = list(output.shape) if isinstance(output, Tensor) else type(output).__name__
                raise ValueError(
                    f"Expected layer {layer!r} to output a featuremap [B, U, h, w] to prune, but"
                    f" got {what}."
                )
            return apply_unit_edit(output, self._edit(layer, output.shape[1]), layer=layer)

        self._handles[layer] = module.register_forward_hook(hook, prepend=True)

    def apply(self, model: GeneratorLike) -> PruningMask:
        """Install the mask's hooks on ``model`` (moving them if applied elsewhere); returns self.

        ``model`` is the module that runs (layer names are its submodule names), or an
        :class:`~gan_dissect_callbacks.engines.generator.AnalysedGenerator`, whose ``module``
        gets the hooks.

        Raises:
            ValueError: if a masked layer is not a layer of ``model`` (listing the valid names);
                nothing is installed then.
        """
        model = _module_of(model)
        for layer in self.layers:
            resolve_layer(model, layer)
        self.remove()
        self._model = model
        for layer in self.layers:
            self._install(model, layer)
        return self

    def remove(self) -> None:
        """Remove the hooks (the mask's contents are kept)."""
        for handle in self._handles.values():
            handle.remove()
        self._handles.clear()
        self._model = None

    def edits(self, num_units: Mapping[str, int]) -> dict[str, UnitEdit]:
        """The mask as ``{layer: UnitEdit}``, e.g. for a one-off ``edit_activations`` context."""
        return {
            layer: UnitEdit.ablation(self._units[layer], num_units[layer]) for layer in self.layers
        }

    def state_dict(self) -> dict[str, Any]:
        """Plain-value state: ``{"units": {layer: [unit, ...]}}``."""
        return {"units": {layer: list(self._units[layer]) for layer in self.layers}}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Replace the mask's contents; an applied mask updates its model's hooks."""
        units = state_dict.get("units") if isinstance(state_dict, Mapping) else None
        if not isinstance(units, Mapping):
            raise ValueError(
                "Expected a pruning-mask state {'units': {layer: [unit, ...]}}, but got"
                f" {state_dict!r}."
            )
        if self._model is not None:
            for layer in units:
                resolve_layer(self._model, layer)
        self.clear()
        for layer, indices in units.items():
            self.prune(layer, [int(u) for u in indices])

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Any]) -> PruningMask:
        """A new (not applied) mask from :meth:`state_dict` output."""
        mask = cls()
        mask.load_state_dict(state_dict)
        return mask


def apply_pruning_from_checkpoint(
    model: GeneratorLike,
    checkpoint: str | Path | Mapping[str, Any],
    *,
    state_key: str | None = None,
    weights_only: bool = True,
) -> PruningMask:
    """Re-apply the pruning saved in a Lightning checkpoint to a freshly loaded model.

    Forward hooks are not saved with a model's weights, so a pruned generator loaded for inference
    draws its artifact units again until the mask is re-applied. This finds the mask that
    :class:`~gan_dissect_callbacks.callbacks.artifact_pruning.ArtifactPruningCallback` saved in the
    checkpoint's callback states (all of them, merged, unless ``state_key`` picks one) and applies
    it to ``model``, which must have the layer names of the trained module (e.g. the same
    LightningModule class).

    Args:
        model: the freshly loaded model (or an ``AnalysedGenerator`` around it).
        checkpoint: a checkpoint path or an already loaded checkpoint dict.
        state_key: the callback's ``state_key``, to pick one mask among several.
        weights_only: passed to :func:`~gan_dissect_callbacks.checkpoints.read_checkpoint` when
            ``checkpoint`` is a path.

    Returns:
        The applied :class:`PruningMask` (call ``remove()`` to undo it).

    Raises:
        ValueError: if the checkpoint holds no pruning mask (listing its callback states).
    """
    if isinstance(checkpoint, str | Path):
        checkpoint = read_checkpoint(checkpoint, weights_only=weights_only)
    if not isinstance(checkpoint, Mapping):
        raise TypeError(
            "Expected argument `checkpoint` to be a path or a checkpoint dict, but got"
            f" {type(checkpoint).__name__}."
        )
    states = checkpoint.get("callbacks", {})
    found = {
        key: state[MASK_STATE_KEY]
        for key, state in states.items()
        if isinstance(state, Mapping) and MASK_STATE_KEY in state
    }
    if state_key is not None:
        found = {k: v for k, v in found.items() if k == state_key}
    if not found:
        wanted = f" under state key {state_key!r}" if state_key is not None else ""
        raise ValueError(
            f"Expected a pruning mask{wanted} in the checkpoint's callback states, but got none"
            f" (callback states: {sorted(states)}). Was the model trained with"
            " ArtifactPruningCallback(prune=True)?"
        )
    mask = PruningMask()
    for state in found.values():
        for layer, units in PruningMask.from_state_dict(state).state_dict()["units"].items():
            mask.prune(layer, units)
    return mask.apply(model)
