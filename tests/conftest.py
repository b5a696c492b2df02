import torch

# The suite runs on 2 shared cores and its tensors are tiny: OpenMP thread hand-off costs
# more than the math there, so every test process uses one intra-op thread.
torch.set_num_threads(1)
