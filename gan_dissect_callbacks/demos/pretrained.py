"""A toy GAN trained once and shipped, for tests, examples and post-hoc dissection.

``demos/weights/toy_gan_32.pt`` holds the generator and discriminator of a :class:`SceneGAN`
trained for 3,000 batches (seed 0) on one CUDA GPU by::

    python -m gan_dissect_callbacks.demos train --no-dissect --batches 3000 --accelerator gpu \\
        --save-weights gan_dissect_callbacks/demos/weights/toy_gan_32.pt

(on a CPU drop ``--accelerator gpu``: about 10 minutes on 2 cores; results differ in the last
bits from the GPU's)
stored as float16 (about 1 MB) and loaded back as float32.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch

from gan_dissect_callbacks.demos.gan import SceneGAN

__all__ = ["load_pretrained_scene_gan", "save_scene_gan_weights"]

WEIGHTS_FILE = "toy_gan_32.pt"


def _default_path() -> Path:
    return Path(str(resources.files("gan_dissect_callbacks.demos"))) / "weights" / WEIGHTS_FILE


def save_scene_gan_weights(model: SceneGAN, path: str | Path) -> None:
    """Save ``model``'s networks and hyper-parameters as float16."""
    state = {
        k: (v.detach().half() if v.is_floating_point() else v.detach()).cpu()
        for k, v in model.state_dict().items()
        if not k.startswith("fixed_latents")
    }
    hparams = {k: model.hparams[k] for k in ("latent_dim", "width", "image_size")}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"hparams": hparams, "state_dict": state}, path)


def load_pretrained_scene_gan(path: str | Path | None = None) -> SceneGAN:
    """The shipped trained toy GAN (or one saved by :func:`save_scene_gan_weights`), in eval mode.

    Raises:
        FileNotFoundError: if the file is missing, naming the command that makes it.
    """
    path = Path(path) if path is not None else _default_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"No toy GAN weights at {path}. Create them with `python -m "
            f"gan_dissect_callbacks.demos train --no-dissect --batches 3000 --save-weights {path}`."
        )
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model = SceneGAN(**checkpoint["hparams"])
    model.load_state_dict(
        {k: v.float() if v.is_floating_point() else v for k, v in checkpoint["state_dict"].items()}
    )
    return model.eval()
