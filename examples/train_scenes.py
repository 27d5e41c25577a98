"""Train the toy-world GAN with the demo's analysis callbacks and write TensorBoard logs.

Dissection, intervention, artifact pruning and SWD every 500 batches (see
``gan_dissect_callbacks.demos.train.default_callbacks``).

Run:  python examples/train_scenes.py  [--batches 2500]
Then: tensorboard --logdir runs
And:  python -m gan_dissect_callbacks.demos summary runs/scenes/version_0  (the numbers)
"""

from gan_dissect_callbacks.demos.__main__ import main

if __name__ == "__main__":
    import sys

    main(["train", *sys.argv[1:]])
