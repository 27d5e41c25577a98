"""The generator under analysis as one object: what runs, whose layers are named, its latents.

Every engine and callback takes an :class:`AnalysedGenerator` (or a plain ``nn.Module``, which
it wraps). It owns:

- ``module``: the module that runs and whose layers are named and hooked. Layer names are the
  dotted names of *its* submodules (``"generator.layer3"`` on a LightningModule that holds
  ``self.generator``; ``"layer3"`` on the generator itself, e.g. an EMA copy);
- ``generate``: latents → images in ``[-1, 1]``, by default ``module`` itself;
- ``sample_latents``: ``(n, generator) → latents``, found on the module when not given (see
  :func:`~gan_dissect_callbacks.engines.sampling.resolve_latent_sampler`);
- ``device``: where the module's parameters are;
- :meth:`~AnalysedGenerator.harmless`: the one context every analysis runs in — eval mode with
  every submodule's mode restored, the global RNG streams forked, no gradients unless asked for.
  Hooks are installed by :meth:`~AnalysedGenerator.run` only and always removed.

A generator that is not a submodule of the LightningModule being trained — an EMA copy kept
beside it, a separately built module — is analysed by passing it as the module: layer names are
then resolved against it, and an unknown name lists *its* valid names.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.Unflatten(1, (2, 2, 2)), nn.Tanh())
    >>> g = AnalysedGenerator(net, latent_dim=4)
    >>> images, acts = g.run(g.latents(3, seed=0), capture=["1"])
    >>> tuple(images.shape), tuple(acts["1"].shape)
    ((3, 2, 2, 2), (3, 2, 2, 2))
    >>> g.resolve_layer("3")
    Traceback (most recent call last):
    ...
    ValueError: Unknown layer '3'. Valid layers: 0, 1, 2.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from gan_dissect_callbacks.engines.sampling import (
    LatentSampler,
    SampleBatch,
    iterate_samples,
    latents_for,
    resolve_latent_sampler,
    rng_isolated,
)
from gan_dissect_callbacks.instrumentation import (
    UnitEdit,
    capture_activations,
    edit_activations,
    eval_mode,
    layer_names,
    resolve_layer,
)

__all__ = ["AnalysedGenerator", "GeneratorLike"]


class AnalysedGenerator:
    """The generator an analysis runs: its module, how it generates, how its latents are drawn.

    Args:
        module: the module that runs; layer names are its dotted submodule names.
        generate: latents → images in ``[-1, 1]``; defaults to ``module`` itself. It must run
            ``module`` (the hooks sit on ``module``'s layers).
        sample_latents: ``(n, generator) → latents`` on the module's device; by default
            ``module.sample_latents`` (then ``owner.sample_latents``), else standard-normal
            latents of ``latent_dim`` / ``module.latent_dim`` / ``hparams.latent_dim``.
        latent_dim: size of standard-normal latents, when the module does not say.
        owner: where to look for ``sample_latents`` / ``latent_dim`` when ``module`` has none
            (the LightningModule that holds an EMA generator, say).

    Raises:
        TypeError: if ``module`` is not an ``nn.Module`` or ``generate`` is not callable.
        ValueError: if no way to draw latents is found (naming the three ways to give one).
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        generate: Callable[[Tensor], Tensor] | None = None,
        sample_latents: LatentSampler | None = None,
        latent_dim: int | None = None,
        owner: nn.Module | None = None,
    ) -> None:
        if not isinstance(module, nn.Module):
            raise TypeError(
                f"Expected the generator to be an nn.Module (or an AnalysedGenerator), but got "
                f"{type(module).__name__}."
            )
        if generate is not None and not callable(generate):
            raise TypeError(
                f"Expected argument `generate` to be a function latents -> images, but got "
                f"{type(generate).__name__}."
            )
        self.module = module
        self.generate: Callable[[Tensor], Tensor] = generate if generate is not None else module
        self.sample_latents: LatentSampler = _find_sampler(
            module, owner, sample_latents, latent_dim
        )

    @classmethod
    def wrap(cls, generator: GeneratorLike) -> AnalysedGenerator:
        """``generator`` itself if it is one, else one around the module (defaults found on it).

        Example:
            >>> from torch import nn
            >>> m = nn.Linear(2, 2)
            >>> m.latent_dim = 2
            >>> g = AnalysedGenerator.wrap(m)
            >>> AnalysedGenerator.wrap(g) is g, g.module is m
            (True, True)
        """
        if isinstance(generator, AnalysedGenerator):
            return generator
        return cls(generator)

    @classmethod
    def of(
        cls,
        pl_module: nn.Module,
        generator: str | nn.Module | None = None,
        *,
        generate: Callable[[Tensor], Tensor] | None = None,
        sample_latents: LatentSampler | None = None,
        latent_dim: int | None = None,
    ) -> AnalysedGenerator:
        """The generator to analyse in a training module: itself, a named submodule, or a module.

        Args:
            pl_module: the module being trained (a LightningModule).
            generator: ``None``: ``pl_module`` itself (layers ``"generator.layer3"``, images from
                its ``forward``); a dotted attribute name such as ``"generator_ema"``: that
                submodule; an ``nn.Module``: that module (an EMA copy kept outside). Layer names
                are relative to the chosen module.
            generate: latents → images; defaults to the chosen module.
            sample_latents: ``(n, generator) → latents``; looked up on the chosen module, then
                on ``pl_module``.
            latent_dim: size of standard-normal latents, when neither module says.

        Example:
            >>> from torch import nn
            >>> gan = nn.Module()
            >>> gan.latent_dim = 4
            >>> gan.generator_ema = nn.Sequential(nn.Linear(4, 4))
            >>> g = AnalysedGenerator.of(gan, "generator_ema")
            >>> g.layer_names(), g.module is gan.generator_ema
            (['0'], True)
        """
        module = cls.module_of(pl_module, generator)
        owner = pl_module if module is not pl_module else None
        return cls(
            module,
            generate=generate,
            sample_latents=sample_latents,
            latent_dim=latent_dim,
            owner=owner,
        )

    @staticmethod
    def module_of(pl_module: nn.Module, generator: str | nn.Module | None) -> nn.Module:
        """The module :meth:`of` would analyse: ``pl_module``, its named submodule, or the module.

        Raises:
            ValueError: an unknown submodule name (with close matches and the valid names).
            TypeError: a ``generator`` of another type.
        """
        if generator is None:
            return pl_module
        if isinstance(generator, str):
            return resolve_layer(pl_module, generator)  # "Did you mean ...?" and valid names
        if isinstance(generator, nn.Module):
            return generator
        raise TypeError(
            "Expected argument `generator` to be None (the module itself), the name of a "
            f"submodule such as 'generator_ema', or an nn.Module, but got "
            f"{type(generator).__name__}."
        )

    # ------------------------------------------------------------------ layers and device

    @property
    def device(self) -> torch.device:
        """The device of the module's first parameter (the CPU for a module without any)."""
        return next((p.device for p in self.module.parameters()), torch.device("cpu"))

    def layer_names(self) -> list[str]:
        """The layer names this generator accepts (see :func:`~.instrumentation.layer_names`)."""
        return layer_names(self.module)

    def resolve_layer(self, name: str) -> nn.Module:
        """The layer called ``name``; an unknown name gets close matches and the valid names."""
        return resolve_layer(self.module, name)

    def check_layers(self, names: Sequence[str]) -> list[str]:
        """``names`` if every one is a layer of the module (else the first unknown one's error)."""
        for name in names:
            self.resolve_layer(name)
        return list(names)

    # ------------------------------------------------------------------ running

    @contextmanager
    def harmless(self, *, grad: bool = False, also: Sequence[Any] = ()) -> Iterator[None]:
        """Run a block of analysis without side effects on training.

        Eval mode for the module (and every ``nn.Module`` in ``also``, e.g. a discriminator kept
        outside it) with every submodule's own mode restored on exit, the global CPU (and CUDA)
        RNG streams forked, no gradients unless ``grad``, and no autocast region of the caller's:
        the generator runs in its own precision (a bf16 generator in bf16), so an analysis
        triggered inside a mixed-precision region gives the answers it gives outside.
        """
        with ExitStack() as stack:
            stack.enter_context(rng_isolated(self.device))
            stack.enter_context(torch.autocast(self.device.type, enabled=False))
            stack.enter_context(eval_mode(self.module))
            for extra in also:
                if isinstance(extra, nn.Module) and extra is not self.module:
                    stack.enter_context(eval_mode(extra))
            if not grad:
                stack.enter_context(torch.no_grad())
            yield

    def images(self, latents: Tensor, edits: Mapping[str, UnitEdit] | None = None) -> Tensor:
        """Images of ``latents``, with ``edits`` (``{layer: UnitEdit}``) applied if given."""
        latents = self._in_module_precision(latents)
        if not edits:
            return self.generate(latents)
        with edit_activations(self.module, edits):
            return self.generate(latents)

    def _in_module_precision(self, latents: Tensor) -> Tensor:
        # A bf16/fp16 generator gets its latents in its own precision: samplers draw float32.
        reference = next((p for p in self.module.parameters() if p.is_floating_point()), None)
        if reference is None or not latents.is_floating_point() or latents.dtype == reference.dtype:
            return latents
        return latents.to(reference.dtype)

    def run(
        self,
        latents: Tensor,
        *,
        capture: Sequence[str] = (),
        edits: Mapping[str, UnitEdit] | None = None,
        detach: bool = True,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Generate from ``latents`` while capturing the outputs of ``capture`` (after ``edits``).

        Returns:
            ``(images, {layer: featuremap})``.

        Raises:
            ValueError: if a layer is unknown, or did not run while generating (e.g. a
                discriminator layer), naming it.
        """
        with ExitStack() as stack:
            if edits:
                stack.enter_context(edit_activations(self.module, edits))
            acts: dict[str, Tensor] = {}
            if capture:
                acts = stack.enter_context(
                    capture_activations(self.module, list(capture), detach=detach)
                )
            images = self.generate(self._in_module_precision(latents))
        missing = [name for name in capture if name not in acts]
        if missing:
            raise ValueError(
                f"Layer(s) {', '.join(repr(m) for m in missing)} of {type(self.module).__name__} "
                "did not run while generating images, so they cannot be analysed. Name layers "
                "of the generator (see AnalysedGenerator.layer_names()), or pass "
                "`generator=`/`generate=` so that the module whose layers you name is the one "
                "that draws the images."
            )
        return images, dict(acts)

    # ------------------------------------------------------------------ latents

    def latents(self, n: int, seed: int) -> Tensor:
        """``n`` latents drawn from a fresh generator seeded with ``seed``."""
        return self.sample_latents(n, torch.Generator().manual_seed(seed))

    def samples(
        self, num_samples: int, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1
    ) -> Iterator[SampleBatch]:
        """This process's share of ``num_samples`` seeded samples (see :func:`iterate_samples`)."""
        return iterate_samples(
            self.sample_latents, num_samples, batch_size, seed=seed, rank=rank,
            world_size=world_size,
        )  # fmt: skip

    def latents_for(
        self, indices: Sequence[int], num_samples: int, batch_size: int, *, seed: int
    ) -> Tensor:
        """The latents of given sample indices of :meth:`samples` (see :func:`latents_for`)."""
        return latents_for(self.sample_latents, indices, num_samples, batch_size, seed=seed)

    def featuremap_shape(self, layer: str, *, seed: int = 0) -> tuple[int, int, int]:
        """``(units, height, width)`` of ``layer``, probed on one seeded sample (harmlessly).

        Raises:
            ValueError: if the layer's output is not a ``[B, U, h, w]`` featuremap.
        """
        with self.harmless():
            _, acts = self.run(self.latents(1, seed), capture=[layer])
        return featuremap_shape(layer, acts[layer])

    def __repr__(self) -> str:
        generate = "" if self.generate is self.module else f", generate={self.generate!r}"
        return f"AnalysedGenerator({type(self.module).__name__}{generate})"


#: What engines accept as the generator: the object itself, or a module to wrap.
GeneratorLike = AnalysedGenerator | nn.Module


def featuremap_shape(layer: str, r: Tensor) -> tuple[int, int, int]:
    """``(U, h, w)`` of a captured featuremap, or an error naming the layer."""
    if r.ndim != 4:
        raise ValueError(
            f"Expected layer {layer!r} to output a featuremap [B, U, h, w], but got shape "
            f"{list(r.shape)}. Analyse a convolutional layer."
        )
    return int(r.shape[1]), int(r.shape[2]), int(r.shape[3])


def _find_sampler(
    module: nn.Module,
    owner: nn.Module | None,
    sample_latents: LatentSampler | None,
    latent_dim: int | None,
) -> LatentSampler:
    if sample_latents is not None or owner is None:
        return resolve_latent_sampler(module, sample_latents, latent_dim)
    try:
        return resolve_latent_sampler(module, None, latent_dim)
    except ValueError:
        # An EMA copy rarely carries `latent_dim`; its LightningModule does. Its latents are
        # then moved to the analysed module's device.
        found = resolve_latent_sampler(owner, None, latent_dim)

        def on_module_device(n: int, generator: torch.Generator) -> Tensor:
            device = next((p.device for p in module.parameters()), torch.device("cpu"))
            return found(n, generator).to(device)

        return on_module_device
