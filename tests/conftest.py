import torch

# One thread: deterministic float sums and no oversubscription on the 2-core CI machine.
torch.set_num_threads(1)
