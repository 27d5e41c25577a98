"""Modules the ``gan-dissect`` tests load by name (``tests.cli.models:...``), and checkpoints."""

import copy

import lightning.pytorch as pl
import torch

from gan_dissect_callbacks.demos.gan import SceneGAN


class EMASceneGAN(SceneGAN):
    """SceneGAN that also keeps a copy of its generator, as EMA training does."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.generator_ema = copy.deepcopy(self.generator)


def narrow_scene_gan():
    """A toy GAN so narrow that ``generator.layer3`` has 2 units (``generator.layer1`` has 8)."""
    return SceneGAN(latent_dim=8, width=2)


def save_checkpoint(model, path, callback_states=None):
    """Save ``model`` as Lightning saves it; ``callback_states`` as its callbacks' states."""
    trainer = pl.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    if callback_states is not None:
        saved = torch.load(path, map_location="cpu", weights_only=False)
        saved["callbacks"] = callback_states
        torch.save(saved, path)
    return path
