"""Layer lookup, activation capture and unit edits on tiny nets with hand-computed outputs."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from gan_dissect_callbacks.instrumentation import (
    UnitEdit,
    apply_unit_edit,
    capture_activations,
    edit_activations,
    eval_mode,
    layer_names,
    resolve_layer,
)


def tiny_net() -> nn.Sequential:
    """conv0: unit 0 = x, unit 1 = 0.5 - x; relu (in place); conv2: sum of the two units."""
    conv0, conv2 = nn.Conv2d(1, 2, 1), nn.Conv2d(2, 1, 1, bias=False)
    with torch.no_grad():
        conv0.weight.copy_(torch.tensor([1.0, -1.0]).reshape(2, 1, 1, 1))
        conv0.bias.copy_(torch.tensor([0.0, 0.5]))  # type: ignore[union-attr]
        conv2.weight.fill_(1.0)
    return nn.Sequential(conv0, nn.ReLU(inplace=True), conv2).requires_grad_(False)


# x on a 2x2 grid; conv0 gives unit0 = x, unit1 = 0.5 - x.
X = torch.tensor([[[[1.0, -2.0], [0.25, 3.0]]]])
CONV0 = torch.tensor([[[[1.0, -2.0], [0.25, 3.0]], [[-0.5, 2.5], [0.25, -2.5]]]])
RELU = CONV0.clamp(min=0)


def assert_no_hooks(module: nn.Module) -> None:
    for m in module.modules():
        assert not m._forward_hooks
        assert not m._forward_pre_hooks
        assert not m._backward_hooks
        assert not m._forward_hooks_with_kwargs
        assert not m._forward_hooks_always_called
    assert not torch.nn.modules.module._global_forward_hooks


class TinyGAN(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.generator = nn.Sequential()
        self.generator.add_module("layer1", tiny_net())
        self.generator.add_module("layer2", nn.Tanh())
        self.discriminator = nn.Linear(4, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.generator(x)


# ---------------------------------------------------------------- layer names


def test_layer_names_on_a_lightning_module() -> None:
    assert layer_names(TinyGAN()) == [
        "generator",
        "generator.layer1",
        "generator.layer1.0",
        "generator.layer1.1",
        "generator.layer1.2",
        "generator.layer2",
        "discriminator",
    ]


def test_resolve_layer_returns_the_submodule() -> None:
    gan = TinyGAN()
    assert resolve_layer(gan, "generator.layer1.0") is gan.generator.get_submodule("layer1.0")
    assert resolve_layer(gan, "discriminator") is gan.discriminator


def test_unknown_layer_lists_valid_names_and_suggests_close_ones() -> None:
    gan = TinyGAN()
    with pytest.raises(ValueError, match=r"Unknown layer 'generator\.layr2'") as err:
        resolve_layer(gan, "generator.layr2")
    msg = str(err.value)
    assert "Did you mean 'generator.layer2'" in msg
    assert "Valid layers: generator, generator.layer1, generator.layer1.0" in msg
    assert msg.endswith("generator.layer2, discriminator.")


def test_unknown_layer_suggests_the_full_name_of_a_relative_name() -> None:
    with pytest.raises(ValueError, match=r"Did you mean 'generator\.layer2'"):
        resolve_layer(TinyGAN(), "layer2")


def test_unknown_layer_with_a_parameter_name_or_an_empty_name() -> None:
    with pytest.raises(ValueError, match=r"Unknown layer 'generator\.layer1\.0\.weight'"):
        resolve_layer(TinyGAN(), "generator.layer1.0.weight")
    with pytest.raises(ValueError, match="non-empty dotted string"):
        resolve_layer(TinyGAN(), "")


def test_unknown_layer_of_a_module_without_submodules() -> None:
    with pytest.raises(ValueError, match="Linear has no submodules"):
        resolve_layer(nn.Linear(2, 2), "0")


def test_unknown_layer_list_is_truncated_for_large_models() -> None:
    net = nn.Sequential(*[nn.Identity() for _ in range(100)])
    with pytest.raises(ValueError, match=r"\.\.\. \(40 more; see layer_names\(module\)\)\.$"):
        resolve_layer(net, "100")


# ---------------------------------------------------------------- capture


def test_capture_several_layers_in_one_pass() -> None:
    net = tiny_net()
    with capture_activations(net, ["0", "1", "2"]) as acts:
        assert acts == {}
        out = net(X)
    # conv0 is captured before the in-place ReLU overwrites it.
    assert torch.equal(acts["0"], CONV0)
    assert torch.equal(acts["1"], RELU)
    assert torch.equal(acts["2"], RELU.sum(1, keepdim=True))
    assert torch.equal(acts["2"], out)
    assert_no_hooks(net)


def test_capture_without_clone_shares_storage_with_the_layer_output() -> None:
    net = tiny_net()
    with capture_activations(net, ["0"], clone=False) as acts:
        net(X)
    # The in-place ReLU wrote into the very tensor conv0 returned.
    assert torch.equal(acts["0"], RELU)


def test_capture_detach_and_gradients() -> None:
    net = tiny_net()
    x = X.clone().requires_grad_(True)
    with capture_activations(net, ["0"]) as acts:
        net(x)
    assert not acts["0"].requires_grad
    with capture_activations(net, ["0"], detach=False) as acts:
        net(x)
    acts["0"][0, 1].sum().backward()
    assert x.grad is not None
    assert torch.equal(x.grad, -torch.ones_like(X))


def test_capture_keeps_the_last_forward_pass() -> None:
    net = tiny_net()
    with capture_activations(net, ["0"]) as acts:
        net(X)
        net(2 * X)
    assert torch.equal(acts["0"][0, 0], 2 * X[0, 0])


def test_capture_removes_hooks_when_the_body_raises() -> None:
    net = tiny_net()

    def run_and_fail() -> None:
        with capture_activations(net, ["0", "2"]):
            net(X)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_and_fail()
    assert_no_hooks(net)


def test_capture_of_a_non_tensor_output_fails_clearly_and_removes_hooks() -> None:
    class Pair(nn.Module):
        def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
            return x, x

    net = nn.Sequential(Pair())
    with (
        pytest.raises(TypeError, match="Expected layer '0' to output a Tensor, but got tuple"),
        capture_activations(net, ["0"]),
    ):
        net(X)
    assert_no_hooks(net)


def test_capture_rejects_bad_layer_arguments_before_installing_hooks() -> None:
    net = tiny_net()
    with pytest.raises(TypeError, match="sequence of layer names"), capture_activations(net, "0"):
        pass
    with pytest.raises(ValueError, match="at least one layer"), capture_activations(net, []):
        pass
    with pytest.raises(ValueError, match="Unknown layer '3'"), capture_activations(net, ["0", "3"]):
        pass
    assert_no_hooks(net)


# ---------------------------------------------------------------- UnitEdit


def test_ablation_and_insertion_constructors() -> None:
    ablation = UnitEdit.ablation(torch.tensor([3, 0]), num_units=4)
    assert ablation.alpha.tolist() == [1.0, 0.0, 0.0, 1.0]
    assert ablation.value == 0.0
    assert ablation.where is None
    assert UnitEdit.ablation([], num_units=2).alpha.tolist() == [0.0, 0.0]

    insertion = UnitEdit.insertion([2, 0], values=[5.0, 7.0], num_units=3)
    assert insertion.alpha.tolist() == [1.0, 0.0, 1.0]
    assert isinstance(insertion.value, Tensor)
    assert insertion.value.tolist() == [7.0, 0.0, 5.0]
    assert UnitEdit.insertion([1], values=2, num_units=2).value == 2.0

    per_sample = UnitEdit.insertion([1], values=torch.tensor([[1.0], [2.0]]), num_units=2)
    assert isinstance(per_sample.value, Tensor)
    assert per_sample.value.tolist() == [[0.0, 1.0], [0.0, 2.0]]


def test_insertion_values_stay_differentiable() -> None:
    k = torch.tensor([2.0], requires_grad=True)
    edit = UnitEdit.insertion([1], values=k, num_units=2)
    apply_unit_edit(torch.zeros(1, 2, 1, 1), edit).sum().backward()
    assert k.grad is not None
    assert k.grad.tolist() == [1.0]


@pytest.mark.parametrize(
    ("units", "error", "match"),
    [
        ([0, 4], ValueError, r"unit indices in \[0, 4\) for a layer with 4 units, but got \[4\]"),
        ([-1], ValueError, r"but got \[-1\]"),
        ([0.5], TypeError, "integer unit indices"),
        ([[0, 1]], ValueError, "flat list of unit indices"),
    ],
)
def test_ablation_rejects_bad_units(units: list, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        UnitEdit.ablation(units, num_units=4)


def test_constructors_reject_bad_num_units_and_values() -> None:
    with pytest.raises(ValueError, match="`num_units` to be a positive int, but got 0"):
        UnitEdit.ablation([0], num_units=0)
    with pytest.raises(ValueError, match=r"`values` to be a float or to have shape \[2\]"):
        UnitEdit.insertion([0, 1], values=[1.0, 2.0, 3.0], num_units=4)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"alpha": torch.tensor([1, 0])}, TypeError, "`alpha` to be a float tensor"),
        ({"alpha": [1.0, 0.0]}, TypeError, "`alpha` to be a float tensor.*got list"),
        ({"alpha": torch.zeros(1, 1, 2)}, ValueError, r"shape \[U\] or \[B, U\]"),
        (
            {"alpha": torch.tensor([0.5, 1.5])},
            ValueError,
            r"values in \[0, 1\], but got 1.5\. Clamp it",
        ),
        ({"alpha": torch.tensor([float("nan")])}, ValueError, r"values in \[0, 1\], but got nan"),
        (
            {"value": torch.zeros(3)},
            ValueError,
            r"one value per\s+unit like `alpha` \(U=2\), but got shape \[3\]",
        ),
        ({"value": torch.zeros(2, dtype=torch.long)}, TypeError, "`value` to be a float or"),
        ({"value": torch.zeros(1, 1, 2)}, ValueError, r"`value` to have shape \[U\] or \[B, U\]"),
        ({"value": float("inf")}, ValueError, "`value` to be finite"),
        ({"value": torch.tensor([0.0, float("nan")])}, ValueError, "`value` to be finite"),
        ({"value": True}, TypeError, "`value` to be a float or a tensor"),
        ({"where": torch.ones(2, 2, dtype=torch.long)}, TypeError, "bool or float tensor"),
        ({"where": torch.ones(4, dtype=torch.bool)}, ValueError, r"shape \[h, w\] or \[B, h, w\]"),
        ({"where": torch.zeros(3, 3, dtype=torch.bool)}, ValueError, "select at least one pixel"),
        ({"where": torch.full((2, 2), 2.0)}, ValueError, r"`where` to have values in \[0, 1\]"),
        (
            {"alpha": torch.zeros(2, 2), "value": torch.zeros(3, 2)},
            ValueError,
            r"`value` to have the batch size of the other edit fields \(2\), but got 3",
        ),
        (
            {"alpha": torch.zeros(2, 2), "where": torch.ones(3, 1, 1)},
            ValueError,
            r"`where` to have the batch size of the other edit fields \(2\), but got 3",
        ),
    ],
)
def test_unit_edit_rejects_bad_fields(kwargs: dict, error: type, match: str) -> None:
    fields = {"alpha": torch.tensor([1.0, 0.0]), **kwargs}
    with pytest.raises(error, match=match):
        UnitEdit(**fields)


def test_a_per_sample_empty_pixel_mask_is_allowed() -> None:
    # A concept-located edit over a batch may find the concept absent in some samples.
    where = torch.tensor([[[False]], [[True]]])
    edit = UnitEdit.ablation([0], num_units=1, where=where)
    out = apply_unit_edit(torch.ones(2, 1, 1, 1), edit)
    assert out.flatten().tolist() == [1.0, 0.0]


# ---------------------------------------------------------------- apply_unit_edit


def reference_edit(r: Tensor, alpha: Tensor, value: float | Tensor, where: Tensor | None) -> Tensor:
    """Element by element: (1 - a) r + a k with a = alpha[b?, u] * P[b?, i, j]."""
    out = r.clone()
    batch, units, height, width = r.shape
    for b in range(batch):
        for u in range(units):
            a_u = float(alpha[b, u] if alpha.dim() == 2 else alpha[u])
            if isinstance(value, Tensor):
                k = float(value[b, u] if value.dim() == 2 else value[u])
            else:
                k = value
            for i in range(height):
                for j in range(width):
                    p = 1.0
                    if where is not None:
                        p = float(where[b, i, j] if where.dim() == 3 else where[i, j])
                    a = a_u * p
                    out[b, u, i, j] = (1 - a) * float(r[b, u, i, j]) + a * k
    return out


@settings(max_examples=60, deadline=None)
@given(
    batch=st.integers(1, 3),
    units=st.integers(1, 4),
    height=st.integers(1, 3),
    width=st.integers(1, 3),
    alpha_batched=st.booleans(),
    value_kind=st.sampled_from(["float", "units", "batch"]),
    where_kind=st.sampled_from(["none", "bool", "float", "bool_batch", "float_batch"]),
    seed=st.integers(0, 2**16),
)
def test_apply_unit_edit_matches_the_elementwise_rule(
    batch: int,
    units: int,
    height: int,
    width: int,
    alpha_batched: bool,
    value_kind: str,
    where_kind: str,
    seed: int,
) -> None:
    gen = torch.Generator().manual_seed(seed)
    r = torch.randn(batch, units, height, width, generator=gen, dtype=torch.float64)
    alpha = torch.rand((batch, units) if alpha_batched else (units,), generator=gen)
    alpha = alpha.double()
    value: float | Tensor = 1.5
    if value_kind != "float":
        value_shape = (units,) if value_kind == "units" else (batch, units)
        value = torch.randn(value_shape, generator=gen, dtype=torch.float64)
    where: Tensor | None = None
    if where_kind != "none":
        shape = (batch, height, width) if where_kind.endswith("batch") else (height, width)
        where = torch.rand(shape, generator=gen, dtype=torch.float64)
        where.view(-1)[0] = 1.0  # never empty
        if where_kind.startswith("bool"):
            where = where > 0.5
    out = apply_unit_edit(r, UnitEdit(alpha=alpha, value=value, where=where))
    torch.testing.assert_close(out, reference_edit(r, alpha, value, where), rtol=1e-12, atol=1e-12)


def test_alpha_one_gives_k_exactly_and_alpha_zero_gives_r_exactly() -> None:
    r = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 1e6
    where = torch.zeros(4, 4, dtype=torch.bool)
    where[1:3, 2] = True
    out = apply_unit_edit(r, UnitEdit.insertion([1], values=0.3, num_units=3, where=where))
    expected = r.clone()
    expected[:, 1, 1:3, 2] = 0.3
    assert torch.equal(out, expected)


def test_apply_unit_edit_follows_the_featuremap_dtype_and_keeps_r_untouched() -> None:
    r = torch.ones(1, 2, 1, 1, dtype=torch.float64)
    out = apply_unit_edit(r, UnitEdit(alpha=torch.tensor([0.25, 0.0]), value=torch.zeros(2)))
    assert out.dtype == torch.float64
    assert out.flatten().tolist() == [0.75, 1.0]
    assert r.flatten().tolist() == [1.0, 1.0]


def test_gradients_flow_to_alpha_value_where_and_r() -> None:
    gen = torch.Generator().manual_seed(1)
    r = torch.randn(2, 3, 2, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    alpha = torch.rand(2, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    value = torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True)
    where = torch.rand(2, 2, generator=gen, dtype=torch.float64, requires_grad=True)

    def edited(r: Tensor, alpha: Tensor, value: Tensor, where: Tensor) -> Tensor:
        return apply_unit_edit(r, UnitEdit(alpha=alpha, value=value, where=where))

    assert torch.autograd.gradcheck(edited, (r, alpha, value, where))


@pytest.mark.parametrize(
    ("r_shape", "edit", "match"),
    [
        (
            (2, 3, 4, 4),
            UnitEdit.ablation([0], num_units=5),
            r"one entry per unit of layer 'g\.l4' \(3 units, output shape \[2, 3, 4, 4\]\), "
            r"but got 5",
        ),
        (
            (2, 3, 4, 4),
            UnitEdit(alpha=torch.zeros(3, 3)),
            r"`alpha` to have the batch size of layer 'g\.l4' \(2, .*but got 3",
        ),
        (
            (2, 3, 4, 4),
            UnitEdit(alpha=torch.zeros(3), value=torch.zeros(1, 3)),
            r"`value` to have the batch size of layer 'g\.l4' \(2, .*but got 1",
        ),
        (
            (2, 3, 4, 4),
            UnitEdit(alpha=torch.zeros(3), where=torch.ones(3, 4, 4)),
            r"`where` to have the batch size of layer 'g\.l4' \(2, .*but got 3",
        ),
        (
            (2, 3, 4, 4),
            UnitEdit.ablation([0], num_units=3, where=torch.ones(8, 8)),
            r"pixel grid of layer 'g\.l4' \(4x4, .*but got 8x8\. Resize",
        ),
        ((2, 3), UnitEdit.ablation([0], num_units=3), r"shape \[B, U, h, w\] to edit, but got"),
    ],
)
def test_an_edit_that_does_not_fit_the_layer_names_it(
    r_shape: tuple[int, ...], edit: UnitEdit, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        apply_unit_edit(torch.zeros(r_shape), edit, layer="g.l4")


# ---------------------------------------------------------------- edit_activations


def test_ablation_of_one_unit_through_the_net() -> None:
    net = tiny_net()
    with edit_activations(net, {"0": UnitEdit.ablation([1], num_units=2)}):
        out = net(X)
    assert torch.equal(out, RELU[:, :1])
    assert torch.equal(net(X), RELU.sum(1, keepdim=True))  # gone after exit
    assert_no_hooks(net)


def test_insertion_at_pixels_through_the_net() -> None:
    net = tiny_net()
    where = torch.tensor([[True, False], [False, False]])
    with edit_activations(net, {"1": UnitEdit.insertion([0], 10.0, num_units=2, where=where)}):
        out = net(X)
    expected = RELU.sum(1, keepdim=True)
    expected[0, 0, 0, 0] = 10.0 + RELU[0, 1, 0, 0]
    assert torch.equal(out, expected)


def test_alpha_blend_and_its_gradient_through_the_net() -> None:
    net = tiny_net().double()
    alpha = torch.tensor([0.25, 0.5], dtype=torch.float64, requires_grad=True)
    with edit_activations(net, {"1": UnitEdit(alpha=alpha, value=2.0)}):
        out = net(X.double()).sum()
    relu = RELU.double()
    # Per pixel: sum_u (1 - a_u) relu_u + a_u * 2, summed over 4 pixels.
    expected = ((1 - alpha[:, None, None]) * relu[0] + 2 * alpha[:, None, None]).sum()
    assert torch.allclose(out, expected)
    out.backward()
    assert alpha.grad is not None
    assert torch.allclose(alpha.grad, 8.0 - relu[0].sum((1, 2)))


def test_edits_on_a_lightning_module_by_dotted_name() -> None:
    gan = TinyGAN()
    edits = {"generator.layer1.0": UnitEdit.ablation([0, 1], num_units=2)}
    with edit_activations(gan, edits), capture_activations(gan, ["generator.layer2"]) as acts:
        out = gan(X)
    assert torch.equal(out, torch.zeros(1, 1, 2, 2))
    assert torch.equal(acts["generator.layer2"], out)
    assert_no_hooks(gan)


@pytest.mark.parametrize("capture_outside", [False, True])
def test_capture_sees_the_edited_output_whatever_the_nesting(capture_outside: bool) -> None:
    net = tiny_net()
    edit = {"0": UnitEdit.insertion([0], values=-1.0, num_units=2)}
    if capture_outside:
        with capture_activations(net, ["0", "2"]) as acts, edit_activations(net, edit):
            net(X)
    else:
        with edit_activations(net, edit), capture_activations(net, ["0", "2"]) as acts:
            net(X)
    expected = CONV0.clone()
    expected[:, 0] = -1.0
    assert torch.equal(acts["0"], expected)
    assert torch.equal(acts["2"], RELU[:, 1:])
    assert_no_hooks(net)


def test_nested_edits_of_one_layer_apply_the_innermost_first() -> None:
    net = nn.Sequential(nn.Identity())
    r = torch.ones(1, 1, 1, 1)
    ablate = {"0": UnitEdit.ablation([0], num_units=1)}
    insert = {"0": UnitEdit.insertion([0], values=5.0, num_units=1)}
    with edit_activations(net, ablate), edit_activations(net, insert):
        assert net(r).item() == 0.0
    with edit_activations(net, insert), edit_activations(net, ablate):
        assert net(r).item() == 5.0
    assert_no_hooks(net)


def test_edit_removes_hooks_when_the_body_raises() -> None:
    net = tiny_net()
    with (
        pytest.raises(RuntimeError, match="boom"),
        edit_activations(net, {"0": UnitEdit.ablation([0], 2), "2": UnitEdit.ablation([0], 1)}),
    ):
        raise RuntimeError("boom")
    assert_no_hooks(net)


def test_edit_that_does_not_fit_fails_at_forward_time_and_removes_hooks() -> None:
    net = tiny_net()
    with (
        pytest.raises(ValueError, match=r"layer '0' \(2 units, output shape \[1, 2, 2, 2\]\)"),
        edit_activations(net, {"0": UnitEdit.ablation([0], num_units=4)}),
    ):
        net(X)
    assert_no_hooks(net)


def test_edit_rejects_bad_arguments_before_installing_hooks() -> None:
    net = tiny_net()
    not_an_edit = {"0": torch.zeros(2)}
    with (
        pytest.raises(TypeError, match="Expected the edit for layer '0' to be a UnitEdit"),
        edit_activations(net, not_an_edit),  # type: ignore[arg-type]
    ):
        pass
    with (
        pytest.raises(ValueError, match="Unknown layer 'generator'"),
        edit_activations(net, {"generator": UnitEdit.ablation([0], 2)}),
    ):
        pass
    with (
        pytest.raises(TypeError, match="mapping"),
        edit_activations(net, [("0", UnitEdit.ablation([0], 2))]),  # type: ignore[arg-type]
    ):
        pass
    assert_no_hooks(net)


# ---------------------------------------------------------------- eval_mode


def test_eval_mode_restores_each_submodules_own_mode_also_on_error() -> None:
    gan = TinyGAN().train()
    gan.generator.get_submodule("layer2").eval()
    modes = [m.training for m in gan.modules()]
    with eval_mode(gan) as same:
        assert same is gan
        assert not any(m.training for m in gan.modules())
    assert [m.training for m in gan.modules()] == modes

    def run_and_fail() -> None:
        with eval_mode(gan):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_and_fail()
    assert [m.training for m in gan.modules()] == modes
