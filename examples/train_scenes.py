"""Train the toy-world GAN with the dissection callbacks and write TensorBoard logs.

Run:  python examples/train_scenes.py  [--batches 2500]
Then: tensorboard --logdir runs
"""

from gan_dissect_callbacks.demos.__main__ import main

if __name__ == "__main__":
    import sys

    main(["train", *sys.argv[1:]])
