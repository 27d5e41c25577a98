"""Train the toy-world GAN from a LightningCLI config that attaches the four analysis callbacks.

Run:  python examples/lightning_cli.py fit --config examples/lightning_cli.yaml
Then: tensorboard --logdir runs

Every callback, and the toy segmenter the first two take, is built from the YAML's
``class_path``/``init_args`` entries; any argument can be overridden on the command line, e.g.
``--trainer.max_steps 200``. Needs ``pip install "gan_dissect_callbacks[cli]"``.
"""

from lightning.pytorch.cli import LightningCLI

from gan_dissect_callbacks.demos.gan import SceneGAN
from gan_dissect_callbacks.demos.train import SceneDataModule


def main() -> None:
    LightningCLI(SceneGAN, SceneDataModule)


if __name__ == "__main__":
    main()
