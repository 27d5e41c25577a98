"""gan_dissect_callbacks: dissect a GAN while it trains (GAN Dissection as Lightning callbacks)."""

__version__ = "0.1.0"
