import torch

# The suite runs on 2 shared cores; one intra-op thread per test process is both
# faster there and deterministic.
torch.set_num_threads(1)
