"""Find layers by name, capture their outputs and edit their units, on any ``nn.Module``.

Layers are addressed by the dotted names of :meth:`torch.nn.Module.named_modules`, so on a
LightningModule that holds its generator as ``self.generator`` the fourth block is
``"generator.layer4"``.

Everything that changes a featuremap goes through one rule, :func:`apply_unit_edit`::

    r ← (1 − α) ⊙ r + α ⊙ k        (per unit u; only at the pixels P if given)

Ablation is ``α = 1, k = 0`` on the chosen units, insertion is ``α = 1, k = value``, the
continuous intervention of the paper optimises ``α ∈ [0, 1]`` directly, and a persistent
pruning mask is an ablation that is never removed.

Both context managers install forward hooks and always remove them on exit, also when the body
raises. They compose: edits run before captures on the same layer whatever the nesting order, so a
capture sees the featuremap that the next layer receives.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU())
    >>> _ = net.requires_grad_(False)
    >>> _ = net[0].weight.fill_(1.0), net[0].bias.zero_()
    >>> z = torch.ones(1, 1, 2, 2)
    >>> with edit_activations(net, {"0": UnitEdit.ablation([1], num_units=2)}):
    ...     with capture_activations(net, ["0", "1"]) as acts:
    ...         _ = net(z)
    >>> acts["0"][0, :, 0, 0].tolist()
    [1.0, 0.0]
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

__all__ = [
    "UnitEdit",
    "apply_unit_edit",
    "capture_activations",
    "edit_activations",
    "eval_mode",
    "layer_names",
    "resolve_layer",
]

# Long enough to show every layer of a small generator; a large model gets the first ones, the
# close matches and a pointer to ``layer_names``.
_MAX_LISTED_LAYERS = 60


def layer_names(module: nn.Module) -> list[str]:
    """Dotted names of every submodule of ``module``, in registration order.

    The module itself (name ``""``) is not listed. A submodule registered under two names is
    listed once, under the first.

    Args:
        module: any ``nn.Module``, e.g. a LightningModule.

    Returns:
        The names that :func:`resolve_layer` accepts.

    Example:
        >>> from torch import nn
        >>> gan = nn.Module()
        >>> gan.generator = nn.Sequential(nn.Linear(2, 4), nn.ReLU())
        >>> layer_names(gan)
        ['generator', 'generator.0', 'generator.1']
    """
    return [name for name, _ in module.named_modules() if name]


def resolve_layer(module: nn.Module, name: str) -> nn.Module:
    """The submodule of ``module`` called ``name`` (a dotted path such as ``"generator.layer4"``).

    Args:
        module: any ``nn.Module``.
        name: a name from :func:`layer_names`.

    Returns:
        The submodule.

    Raises:
        ValueError: if ``name`` is not a layer of ``module``; the message suggests the closest
            names and lists the valid ones.

    Example:
        >>> from torch import nn
        >>> gan = nn.Module()
        >>> gan.generator = nn.Sequential(nn.Linear(2, 4), nn.ReLU())
        >>> resolve_layer(gan, "generator.1")
        ReLU()
        >>> resolve_layer(gan, "generator.2")
        Traceback (most recent call last):
        ...
        ValueError: Unknown layer 'generator.2'. Did you mean 'generator.1', 'generator.0', \
'generator'? Valid layers: generator, generator.0, generator.1.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(
            f"Expected a layer name to be a non-empty dotted string such as 'generator.layer4', "
            f"but got {name!r}."
        )
    try:
        found = module.get_submodule(name)
    except AttributeError:
        found = None
    if isinstance(found, nn.Module):
        return found
    raise ValueError(_unknown_layer_message(module, name))


def _unknown_layer_message(module: nn.Module, name: str) -> str:
    names = layer_names(module)
    if not names:
        return (
            f"Unknown layer {name!r}: {type(module).__name__} has no submodules, so there is no "
            "layer to hook."
        )
    # A name given relative to a wrapped model ("layer4" for "generator.layer4"), or with the
    # wrapper's prefix on the generator itself ("generator.layer4" on an EMA copy), is the common
    # slip; difflib's ratio alone scores those too low to suggest.
    suffix_matches = [n for n in names if n.endswith("." + name) or name.endswith("." + n)]
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    suggestions = list(dict.fromkeys(suffix_matches + close))[:5]
    hint = f" Did you mean {', '.join(repr(s) for s in suggestions)}?" if suggestions else ""
    listed = ", ".join(names[:_MAX_LISTED_LAYERS])
    if len(names) > _MAX_LISTED_LAYERS:
        listed += f", ... ({len(names) - _MAX_LISTED_LAYERS} more; see layer_names(module))"
    return f"Unknown layer {name!r}.{hint} Valid layers: {listed}."


def _resolve_layers(
    module: nn.Module, layers: Sequence[str], argument: str
) -> dict[str, nn.Module]:
    if isinstance(layers, str) or not isinstance(layers, Sequence):
        raise TypeError(
            f"Expected argument `{argument}` to be a sequence of layer names such as "
            f"['generator.layer4'], but got {layers!r}."
        )
    if len(layers) == 0:
        raise ValueError(
            f"Expected argument `{argument}` to name at least one layer, but got none."
        )
    return {name: resolve_layer(module, name) for name in layers}


def _check_output_is_tensor(layer: str, output: Any) -> Tensor:
    if not isinstance(output, Tensor):
        raise TypeError(
            f"Expected layer {layer!r} to output a Tensor, but got {type(output).__name__}. "
            "Hook a submodule that returns a single featuremap tensor."
        )
    return output


def _remove_all(handles: list[RemovableHandle]) -> None:
    for handle in handles:
        handle.remove()


@contextmanager
def capture_activations(
    module: nn.Module, layers: Sequence[str], *, detach: bool = True, clone: bool = True
) -> Iterator[dict[str, Tensor]]:
    """Capture the outputs of several layers during forward passes of ``module``.

    The yielded dict is filled as the forward pass runs: ``{name: output}``. If the body runs
    several forward passes, or a layer is called several times in one pass, the last output wins.
    Inside :func:`edit_activations` the captured output of an edited layer is the *edited* one,
    whatever the nesting order, i.e. what the next layer receives.

    Args:
        module: the model, e.g. a LightningModule.
        layers: dotted layer names (see :func:`layer_names`).
        detach: detach the captured tensors from the autograd graph. Pass ``False`` to
            differentiate through them.
        clone: copy each captured output. Keep this on unless no later in-place operation (such
            as ``nn.ReLU(inplace=True)``) can overwrite the layer's output.

    Yields:
        The dict of captured outputs, empty until a forward pass runs.

    Raises:
        ValueError: if a layer name is unknown (before any hook is installed).
        TypeError: during the forward pass, if a layer's output is not a Tensor.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(3, 2), nn.Tanh())
        >>> with capture_activations(net, ["0", "1"]) as acts:
        ...     _ = net(torch.randn(5, 3, generator=torch.Generator().manual_seed(0)))
        >>> sorted(acts), acts["1"].shape
        (['0', '1'], torch.Size([5, 2]))
    """
    resolved = _resolve_layers(module, layers, "layers")
    captured: dict[str, Tensor] = {}
    handles: list[RemovableHandle] = []

    def make_hook(name: str) -> Any:
        def hook(_mod: nn.Module, _inputs: Any, output: Any) -> None:
            out = _check_output_is_tensor(name, output)
            if detach:
                out = out.detach()
            captured[name] = out.clone() if clone else out

        return hook

    try:
        for name, layer in resolved.items():
            handles.append(layer.register_forward_hook(make_hook(name)))
        yield captured
    finally:
        _remove_all(handles)


@dataclass(frozen=True, eq=False)
class UnitEdit:
    """An edit of a layer's units: ``r ← (1 − α) ⊙ r + α ⊙ k``, optionally only at pixels P.

    Shapes, for a featuremap ``r`` of shape ``[B, U, h, w]``:

    - ``alpha``: float in ``[0, 1]``, ``[U]`` (shared by the batch) or ``[B, U]``. Gradients flow
      to it, which the continuous intervention needs.
    - ``value`` (k): a float, or a float tensor ``[U]`` or ``[B, U]``.
    - ``where`` (P): ``None`` for every pixel, or a bool or float (in ``[0, 1]``) tensor ``[h, w]``
      or ``[B, h, w]`` at the featuremap's resolution. A float P scales α per pixel.

    The fields are checked here on their own (dtype, rank, range, a non-empty P); whether they fit
    a layer is checked when the edit meets the featuremap, naming the layer.

    Args:
        alpha: the degree of the edit per unit.
        value: the value k that the edited units move towards.
        where: the pixels P to edit.

    Raises:
        TypeError: if a field has the wrong type or dtype.
        ValueError: if a field has the wrong rank, values out of range, or P selects no pixel.

    Example:
        >>> import torch
        >>> edit = UnitEdit(alpha=torch.tensor([0.0, 0.5]), value=2.0)
        >>> apply_unit_edit(torch.ones(1, 2, 1, 1), edit).flatten().tolist()
        [1.0, 1.5]
    """

    alpha: Tensor
    value: float | Tensor = 0.0
    where: Tensor | None = None

    def __post_init__(self) -> None:
        alpha = self.alpha
        if not isinstance(alpha, Tensor) or not alpha.is_floating_point():
            got = f"dtype {alpha.dtype}" if isinstance(alpha, Tensor) else type(alpha).__name__
            raise TypeError(
                f"Expected argument `alpha` to be a float tensor of shape [U] or [B, U], but got "
                f"{got}. Use UnitEdit.ablation / UnitEdit.insertion to build it from unit indices."
            )
        if alpha.dim() not in (1, 2):
            raise ValueError(
                f"Expected argument `alpha` to have shape [U] or [B, U], but got shape "
                f"{list(alpha.shape)}."
            )
        _check_in_unit_interval(alpha, "alpha")
        units = alpha.shape[-1]
        batch = alpha.shape[0] if alpha.dim() == 2 else None

        value = self.value
        if isinstance(value, Tensor):
            if not value.is_floating_point():
                raise TypeError(
                    f"Expected argument `value` to be a float or a float tensor, but got dtype "
                    f"{value.dtype}."
                )
            if value.dim() not in (1, 2) or value.shape[-1] != units:
                raise ValueError(
                    f"Expected argument `value` to have shape [U] or [B, U] with one value per "
                    f"unit like `alpha` (U={units}), but got shape {list(value.shape)}."
                )
            if value.dim() == 2:
                batch = _same_batch(batch, value.shape[0], "value")
            if not bool(torch.isfinite(value.detach()).all()):
                raise ValueError("Expected argument `value` to be finite, but got NaN or Inf.")
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(
                f"Expected argument `value` to be a float or a tensor, but got {value!r}."
            )
        elif not math.isfinite(value):
            raise ValueError(f"Expected argument `value` to be finite, but got {value}.")

        where = self.where
        if where is None:
            return
        if not isinstance(where, Tensor) or not (
            where.dtype == torch.bool or where.is_floating_point()
        ):
            got = f"dtype {where.dtype}" if isinstance(where, Tensor) else type(where).__name__
            raise TypeError(
                f"Expected argument `where` to be a bool or float tensor of shape [h, w] or "
                f"[B, h, w], but got {got}."
            )
        if where.dim() not in (2, 3):
            raise ValueError(
                f"Expected argument `where` to have shape [h, w] or [B, h, w], but got shape "
                f"{list(where.shape)}."
            )
        if where.dim() == 3:
            _same_batch(batch, where.shape[0], "where")
        if where.is_floating_point():
            _check_in_unit_interval(where, "where")
        if not bool((where.detach() != 0).any()):
            raise ValueError(
                f"Expected argument `where` to select at least one pixel, but all "
                f"{where.numel()} entries are zero. Pass where=None to edit every pixel."
            )

    @classmethod
    def ablation(
        cls, units: Sequence[int] | Tensor, num_units: int, where: Tensor | None = None
    ) -> UnitEdit:
        """Set ``units`` to zero (α = 1, k = 0), at every pixel or only at ``where``.

        Args:
            units: indices of the units to ablate, each in ``[0, num_units)``. An empty list is
                a no-op edit (the ``n = 0`` point of an ablation sweep).
            num_units: the layer's number of units (channels).
            where: the pixels P, as in :class:`UnitEdit`.

        Example:
            >>> UnitEdit.ablation([0, 2], num_units=4).alpha.tolist()
            [1.0, 0.0, 1.0, 0.0]
        """
        index = _unit_index(units, num_units)
        alpha = torch.zeros(num_units, device=index.device)
        alpha[index] = 1.0
        return cls(alpha=alpha, value=0.0, where=where)

    @classmethod
    def insertion(
        cls,
        units: Sequence[int] | Tensor,
        values: float | Sequence[float] | Tensor,
        num_units: int,
        where: Tensor | None = None,
    ) -> UnitEdit:
        """Set ``units`` to constant ``values`` (α = 1, k = values), everywhere or at ``where``.

        Args:
            units: indices of the units to set, each in ``[0, num_units)``.
            values: one value for all listed units, or one per listed unit (``[len(units)]``), or
                one per sample and listed unit (``[B, len(units)]``).
            num_units: the layer's number of units (channels).
            where: the pixels P, as in :class:`UnitEdit`.

        Example:
            >>> edit = UnitEdit.insertion([1], values=[3.0], num_units=2)
            >>> edit.alpha.tolist(), edit.value.tolist()
            ([0.0, 1.0], [0.0, 3.0])
        """
        index = _unit_index(units, num_units)
        alpha = torch.zeros(num_units, device=index.device)
        alpha[index] = 1.0
        if isinstance(values, int | float) and not isinstance(values, bool):
            return cls(alpha=alpha, value=float(values), where=where)
        given = torch.as_tensor(values, device=index.device)
        if not given.is_floating_point():
            given = given.float()
        if given.dim() not in (1, 2) or given.shape[-1] != index.numel():
            raise ValueError(
                f"Expected argument `values` to be a float or to have shape [{index.numel()}] or "
                f"[B, {index.numel()}] (one value per listed unit), but got shape "
                f"{list(given.shape)}."
            )
        # index_copy keeps the values differentiable, should a caller optimise k.
        full = given.new_zeros((*given.shape[:-1], num_units))
        value = full.index_copy(given.dim() - 1, index, given)
        return cls(alpha=alpha.to(given.dtype), value=value, where=where)


def _check_in_unit_interval(t: Tensor, argument: str) -> None:
    d = t.detach()
    if d.numel() and not bool(((d >= 0) & (d <= 1)).all()):
        bad = d[~((d >= 0) & (d <= 1))].flatten()[0].item()
        hint = (
            " Clamp it after each optimiser step: alpha.data.clamp_(0, 1)."
            if argument == "alpha"
            else ""
        )
        raise ValueError(
            f"Expected argument `{argument}` to have values in [0, 1], but got {bad}.{hint}"
        )


def _same_batch(batch: int | None, other: int, argument: str) -> int:
    if batch is not None and other != batch:
        raise ValueError(
            f"Expected argument `{argument}` to have the batch size of the other edit fields "
            f"({batch}), but got {other}."
        )
    return other


def _unit_index(units: Sequence[int] | Tensor, num_units: int) -> Tensor:
    if isinstance(num_units, bool) or not isinstance(num_units, int) or num_units < 1:
        raise ValueError(
            f"Expected argument `num_units` to be a positive int, but got {num_units!r}."
        )
    index = units if isinstance(units, Tensor) else torch.as_tensor(list(units))
    if not isinstance(units, Tensor) and index.numel() == 0:
        index = index.long()
    if index.dtype == torch.bool or index.is_floating_point() or index.is_complex():
        raise TypeError(
            f"Expected argument `units` to hold integer unit indices, but got dtype {index.dtype}."
        )
    if index.dim() != 1:
        raise ValueError(
            f"Expected argument `units` to be a flat list of unit indices, but got shape "
            f"{list(index.shape)}."
        )
    index = index.long()
    out_of_range = index[(index < 0) | (index >= num_units)]
    if out_of_range.numel():
        raise ValueError(
            f"Expected unit indices in [0, {num_units}) for a layer with {num_units} units, but "
            f"got {out_of_range.tolist()}."
        )
    return index


def apply_unit_edit(r: Tensor, edit: UnitEdit, *, layer: str | None = None) -> Tensor:
    """Edit the featuremap ``r``: ``(1 − α) ⊙ r + α ⊙ k`` per unit, at the pixels P of ``edit``.

    This is the one place the edit rule lives; ablation, insertion, the continuous intervention
    and pruning all call it. Where ``α = 0`` the result equals ``r`` exactly and where ``α = 1``
    it equals ``k`` exactly (for finite ``r``). It is differentiable with respect to ``r``,
    ``alpha``, a float ``value`` tensor and a float ``where``. The edit's tensors are moved to
    ``r``'s device and dtype.

    Args:
        r: a featuremap of shape ``[B, U, h, w]``.
        edit: the edit.
        layer: the layer's name, used in error messages only.

    Returns:
        The edited featuremap, a new tensor of ``r``'s shape.

    Raises:
        ValueError: if the edit does not fit ``r`` (unit count, batch size or pixel grid).

    Example:
        >>> import torch
        >>> r = torch.arange(8.0).reshape(1, 2, 2, 2)
        >>> where = torch.tensor([[True, False], [False, True]])
        >>> apply_unit_edit(r, UnitEdit.ablation([1], 2, where=where))[0, 1].tolist()
        [[0.0, 5.0], [6.0, 0.0]]
    """
    _check_edit_fits(r, edit, layer)
    alpha = edit.alpha.to(device=r.device, dtype=r.dtype)
    alpha = alpha.reshape(-1 if alpha.dim() == 2 else 1, alpha.shape[-1], 1, 1)
    if edit.where is not None:
        where = edit.where.to(device=r.device, dtype=r.dtype)
        alpha = alpha * where.reshape(-1 if where.dim() == 3 else 1, 1, *where.shape[-2:])
    value: float | Tensor = edit.value
    if isinstance(value, Tensor):
        value = value.to(device=r.device, dtype=r.dtype)
        value = value.reshape(-1 if value.dim() == 2 else 1, value.shape[-1], 1, 1)
    # The literal form, not r + α(k − r): it returns k exactly where α = 1 and r where α = 0.
    return (1 - alpha) * r + alpha * value


def _check_edit_fits(r: Tensor, edit: UnitEdit, layer: str | None) -> None:
    what = f"layer {layer!r}" if layer is not None else "the featuremap"
    if r.dim() != 4:
        raise ValueError(
            f"Expected {what} to output a featuremap of shape [B, U, h, w] to edit, but got "
            f"shape {list(r.shape)}."
        )
    batch, units, height, width = r.shape
    shape = list(r.shape)
    if edit.alpha.shape[-1] != units:
        raise ValueError(
            f"Expected the edit's `alpha` to have one entry per unit of {what} ({units} units, "
            f"output shape {shape}), but got {edit.alpha.shape[-1]}."
        )
    batched = [("alpha", edit.alpha, 2), ("where", edit.where, 3)]
    if isinstance(edit.value, Tensor):
        batched.append(("value", edit.value, 2))
    for argument, t, batched_dim in batched:
        if t is not None and t.dim() == batched_dim and t.shape[0] != batch:
            raise ValueError(
                f"Expected the edit's `{argument}` to have the batch size of {what} ({batch}, "
                f"output shape {shape}), but got {t.shape[0]}."
            )
    if edit.where is not None and tuple(edit.where.shape[-2:]) != (height, width):
        raise ValueError(
            f"Expected the edit's `where` to have the pixel grid of {what} ({height}x{width}, "
            f"output shape {shape}), but got {edit.where.shape[-2]}x{edit.where.shape[-1]}. "
            "Resize the pixel mask to the featuremap resolution, e.g. with "
            "torch.nn.functional.interpolate(mode='nearest') or adaptive pooling."
        )


@contextmanager
def edit_activations(module: nn.Module, edits: Mapping[str, UnitEdit]) -> Iterator[None]:
    """Replace the outputs of named layers by their edited versions while the context is open.

    Each edit is applied with :func:`apply_unit_edit` on every forward pass inside the context.
    The hooks run before any capture hook on the same layer, so :func:`capture_activations`
    sees the edited featuremap whatever the nesting order. Nested edits of one layer compose,
    the innermost applied first. Hooks are always removed on exit.

    Args:
        module: the model, e.g. a LightningModule.
        edits: ``{layer name: edit}``.

    Raises:
        ValueError: if a layer name is unknown (before any hook is installed); during the forward
            pass, if an edit does not fit its layer's output (naming the layer and its units).
        TypeError: if a value is not a :class:`UnitEdit`; during the forward pass, if a layer's
            output is not a Tensor.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Identity(), nn.Identity())
        >>> with edit_activations(net, {"0": UnitEdit.insertion([0], 5.0, num_units=2)}):
        ...     out = net(torch.zeros(1, 2, 1, 1))
        >>> out.flatten().tolist()
        [5.0, 0.0]
    """
    if not isinstance(edits, Mapping):
        raise TypeError(
            f"Expected argument `edits` to be a mapping {{layer name: UnitEdit}}, but got "
            f"{type(edits).__name__}."
        )
    resolved = _resolve_layers(module, list(edits), "edits")
    for name, edit in edits.items():
        if not isinstance(edit, UnitEdit):
            raise TypeError(
                f"Expected the edit for layer {name!r} to be a UnitEdit, but got "
                f"{type(edit).__name__}."
            )
    handles: list[RemovableHandle] = []

    def make_hook(name: str, edit: UnitEdit) -> Any:
        def hook(_mod: nn.Module, _inputs: Any, output: Any) -> Tensor:
            return apply_unit_edit(_check_output_is_tensor(name, output), edit, layer=name)

        return hook

    try:
        for name, layer in resolved.items():
            # prepend: run before capture hooks (and any user hook) on the same layer.
            handles.append(layer.register_forward_hook(make_hook(name, edits[name]), prepend=True))
        yield
    finally:
        _remove_all(handles)


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put ``module`` in eval mode for the context, then restore every submodule's own mode.

    Restoring per submodule matters: a training model may hold parts that are deliberately in
    eval mode (a frozen BatchNorm, a fixed feature extractor), which ``module.train()`` would flip.

    Args:
        module: any ``nn.Module``.

    Yields:
        ``module``, in eval mode.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.BatchNorm1d(2), nn.Dropout()).train()
        >>> _ = net[0].eval()
        >>> with eval_mode(net):
        ...     [m.training for m in net.modules()]
        [False, False, False]
        >>> [m.training for m in net.modules()]
        [True, False, True]
    """
    modes = [(m, m.training) for m in module.modules()]
    try:
        yield module.eval()
    finally:
        for m, training in modes:
            m.training = training
