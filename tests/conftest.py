"""Suite-wide test settings."""

import torch

# The test models are tiny: one intra-op thread is faster than two, and it keeps timings sane when
# other processes share the cores.
torch.set_num_threads(1)
