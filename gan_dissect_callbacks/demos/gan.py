"""A small DCGAN for the toy world, as a LightningModule with manual optimisation.

The generator's layers are named the way dissection talks about them: ``generator.layer1`` (the
4×4 featuremap) … ``generator.layer3`` (16×16 at 32 px output) are ``ConvTranspose → BatchNorm →
ReLU`` blocks whose channels are the *units*; the last layer (``layer4`` at 32 px) maps to RGB
with ``tanh`` so images lie in ``[-1, 1]``.

**Step axis.** With two optimizers stepped by hand, ``trainer.global_step`` advances twice per
batch while ``self.log`` plots against batches. Everything this package logs uses *batches* (the
number of training batches run), the same axis as ``self.log``; so ``max_steps`` of the trainer
is twice the number of batches (see :func:`gan_dissect_callbacks.demos.train.train_scene_gan`).

Example:
    >>> import torch
    >>> gan = SceneGAN(latent_dim=16, width=8)
    >>> z = gan.sample_latents(2, generator=torch.Generator().manual_seed(0))
    >>> tuple(gan(z).shape)
    (2, 3, 32, 32)
    >>> [name for name, _ in gan.generator.named_children()]
    ['layer1', 'layer2', 'layer3', 'layer4']
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SceneDiscriminator", "SceneGAN", "SceneGenerator"]


def _check_image_size(image_size: int) -> int:
    if image_size not in (16, 32, 64, 128):
        raise ValueError(
            f"Expected argument `image_size` to be one of 16, 32, 64, 128, but got {image_size!r}."
        )
    return int(math.log2(image_size)) - 2  # number of stride-2 upsamplings after the 4×4 start


class SceneGenerator(nn.Module):
    """DCGAN generator ``z → image`` with named layers ``layer1`` … ``layerN``.

    Args:
        latent_dim: size of ``z``.
        width: channels of the last hidden layer; earlier layers double it (``layer1`` has
            ``width · 2^(n-1)`` units for n = log2(image_size) - 2).
        image_size: output side, a power of two from 16 to 128.

    Example:
        >>> g = SceneGenerator(latent_dim=8, width=4, image_size=16)
        >>> [tuple(getattr(g, f"layer{i}")[0].weight.shape) for i in (1, 2, 3)]
        [(8, 8, 4, 4), (8, 4, 4, 4), (4, 3, 4, 4)]
    """

    def __init__(self, latent_dim: int = 64, width: int = 32, image_size: int = 32) -> None:
        super().__init__()
        upsamplings = _check_image_size(image_size)
        self.latent_dim = latent_dim
        channels = [width * 2 ** (upsamplings - 1 - i) for i in range(upsamplings)]
        self.layer1 = nn.Sequential(
            nn.ConvTranspose2d(latent_dim, channels[0], 4, 1, 0, bias=False),
            nn.BatchNorm2d(channels[0]),
            nn.ReLU(inplace=False),
        )
        for i in range(1, upsamplings):
            block = nn.Sequential(
                nn.ConvTranspose2d(channels[i - 1], channels[i], 4, 2, 1, bias=False),
                nn.BatchNorm2d(channels[i]),
                nn.ReLU(inplace=False),
            )
            self.add_module(f"layer{i + 1}", block)
        self.add_module(
            f"layer{upsamplings + 1}",
            nn.Sequential(nn.ConvTranspose2d(channels[-1], 3, 4, 2, 1), nn.Tanh()),
        )

    def forward(self, z: Tensor) -> Tensor:
        """Map latents ``[B, latent_dim]`` to images ``[B, 3, S, S]`` in ``[-1, 1]``."""
        x = z.view(z.shape[0], -1, 1, 1)
        for layer in self.children():
            x = layer(x)
        return x


class SceneDiscriminator(nn.Module):
    """DCGAN discriminator ``image → logit``, the mirror image of :class:`SceneGenerator`."""

    def __init__(self, width: int = 32, image_size: int = 32) -> None:
        super().__init__()
        downsamplings = _check_image_size(image_size)
        layers: list[nn.Module] = [nn.Conv2d(3, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        channels = width
        for _ in range(downsamplings - 1):
            layers += [
                nn.Conv2d(channels, channels * 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(channels * 2),
                nn.LeakyReLU(0.2),
            ]
            channels *= 2
        layers.append(nn.Conv2d(channels, 1, 4, 1, 0))
        self.main = nn.Sequential(*layers)

    def forward(self, images: Tensor) -> Tensor:
        """Return one real/fake logit per image, shape ``[B]``."""
        return self.main(images).flatten()


class SceneGAN(pl.LightningModule):
    """The toy-world GAN: non-saturating DCGAN trained with manual optimisation.

    Args:
        latent_dim: size of ``z``.
        width: generator/discriminator width (see :class:`SceneGenerator`).
        image_size: image side (32 by default).
        lr: Adam learning rate for both networks.
        betas: Adam betas.
        sample_every_n_batches: log a grid of samples from fixed latents to every TensorBoard
            logger this often (0 disables it).

    The callbacks of this package find the latent sampler through :meth:`sample_latents`.
    """

    def __init__(
        self,
        latent_dim: int = 64,
        width: int = 32,
        image_size: int = 32,
        lr: float = 2e-4,
        betas: tuple[float, float] = (0.5, 0.999),
        sample_every_n_batches: int = 250,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.latent_dim = latent_dim
        self.generator = SceneGenerator(latent_dim, width, image_size)
        self.discriminator = SceneDiscriminator(width, image_size)
        fixed = torch.randn(64, latent_dim, generator=torch.Generator().manual_seed(1234))
        self.register_buffer("fixed_latents", fixed, persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        generator = torch.Generator().manual_seed(0)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                with torch.no_grad():
                    module.weight.copy_(
                        torch.randn(module.weight.shape, generator=generator) * 0.02
                    )
            elif isinstance(module, nn.BatchNorm2d):
                with torch.no_grad():
                    module.weight.copy_(
                        1 + 0.02 * torch.randn(module.weight.shape, generator=generator)
                    )
                    module.bias.zero_()

    def sample_latents(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` latents ``z ~ N(0, I)`` on the module's device (seeded by ``generator``)."""
        return torch.randn(n, self.latent_dim, generator=generator).to(self.device)

    def forward(self, z: Tensor) -> Tensor:
        """Generate images from latents."""
        return self.generator(z)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        real = batch[0] if isinstance(batch, (list, tuple)) else batch
        g_opt, d_opt = self.optimizers()  # type: ignore[attr-defined]
        z = torch.randn(real.shape[0], self.latent_dim, device=self.device)

        fake = self.generator(z)
        real_logits = self.discriminator(real)
        fake_logits = self.discriminator(fake.detach())
        d_loss = F.binary_cross_entropy_with_logits(
            real_logits, torch.ones_like(real_logits)
        ) + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
        d_opt.zero_grad()
        self.manual_backward(d_loss)
        d_opt.step()

        gen_logits = self.discriminator(fake)
        g_loss = F.binary_cross_entropy_with_logits(gen_logits, torch.ones_like(gen_logits))
        g_opt.zero_grad()
        self.manual_backward(g_loss)
        g_opt.step()

        self.log_dict(
            {
                "loss/generator": g_loss.detach(),
                "loss/discriminator": d_loss.detach(),
                "discriminator/real": torch.sigmoid(real_logits.detach()).mean(),
                "discriminator/fake": torch.sigmoid(fake_logits.detach()).mean(),
            },
            prog_bar=True,
        )

    def on_train_start(self) -> None:
        if self.hparams["sample_every_n_batches"]:
            self._log_samples(0)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        from gan_dissect_callbacks.callbacks._trainer import batch_step

        every = self.hparams["sample_every_n_batches"]
        done = batch_step(self.trainer) + 1  # batches trained so far: the state we draw
        if every and done % every == 0:
            self._log_samples(done)

    @torch.no_grad()
    def _log_samples(self, step: int) -> None:
        # Imported here: reporting depends on matplotlib, which a bare model does not need.
        from gan_dissect_callbacks.callbacks._trainer import tensorboard_writers
        from gan_dissect_callbacks.reporting.images import image_grid

        was_training = self.generator.training
        self.generator.eval()
        try:
            images = self.generator(self.fixed_latents)
        finally:
            self.generator.train(was_training)
        grid = image_grid(images, nrow=8)
        for writer in tensorboard_writers(self.trainer):
            writer.add_image("samples/fixed_latents", grid, global_step=step)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        betas = tuple(self.hparams["betas"])
        lr = self.hparams["lr"]
        return [
            torch.optim.Adam(self.generator.parameters(), lr=lr, betas=betas),
            torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=betas),
        ]
