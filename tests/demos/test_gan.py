"""The toy GAN: named layers, shapes, and a real training step through Lightning."""

import lightning.pytorch as pl
import pytest
import torch

from gan_dissect_callbacks.demos.gan import SceneGAN, SceneGenerator
from gan_dissect_callbacks.demos.train import SceneDataModule


def test_generator_layers_are_named_and_shapes_follow_the_image_size():
    g = SceneGenerator(latent_dim=8, width=8, image_size=32)
    names = [n for n, _ in g.named_children()]
    assert names == ["layer1", "layer2", "layer3", "layer4"]
    out = {}
    x = torch.randn(2, 8, 1, 1)
    for name, layer in g.named_children():
        x = layer(x)
        out[name] = x.shape
    assert out["layer1"] == (2, 32, 4, 4)
    assert out["layer2"] == (2, 16, 8, 8)
    assert out["layer3"] == (2, 8, 16, 16)
    assert out["layer4"] == (2, 3, 32, 32)
    assert x.abs().max() <= 1


def test_bad_image_size_is_named():
    with pytest.raises(ValueError, match="image_size"):
        SceneGenerator(image_size=48)


def test_sample_latents_is_seeded():
    gan = SceneGAN(latent_dim=8, width=8)
    a = gan.sample_latents(3, generator=torch.Generator().manual_seed(1))
    b = gan.sample_latents(3, generator=torch.Generator().manual_seed(1))
    assert a.shape == (3, 8) and torch.equal(a, b)


def test_training_steps_update_both_networks_and_log_one_step_per_batch(tmp_path):
    pl.seed_everything(0)
    gan = SceneGAN(latent_dim=16, width=8, sample_every_n_batches=2)
    before_g = [p.detach().clone() for p in gan.generator.parameters()]
    before_d = [p.detach().clone() for p in gan.discriminator.parameters()]
    data = SceneDataModule(num_scenes=64, batch_size=16)
    logger = pl.loggers.TensorBoardLogger(str(tmp_path), name="t")
    trainer = pl.Trainer(
        max_steps=8,
        logger=logger,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(gan, datamodule=data)
    assert trainer.global_step == 8  # two optimizer steps per batch
    assert trainer.fit_loop.total_batch_idx == 3
    assert all(not torch.equal(a, b) for a, b in zip(before_g, gan.generator.parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(before_d, gan.discriminator.parameters()))
    assert torch.isfinite(trainer.logged_metrics["loss/generator"])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(logger.log_dir)
    events.Reload()
    assert "samples/fixed_latents" in events.Tags()["images"]
    steps = [e.step for e in events.Scalars("loss/generator")]
    assert steps == [0, 1, 2, 3]  # the batch axis, not global_step
    assert [e.step for e in events.Images("samples/fixed_latents")] == [0, 2, 4]
