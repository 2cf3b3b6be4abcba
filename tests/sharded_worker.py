"""Run by tests/test_sharded.py under torchrun (2 gloo processes): a GPT sharded with
FSDP2 against the same GPT in one process. Rank 0 writes the comparison to argv[1]."""

import copy
import json
import sys

import torch
from torch.distributed.fsdp import fully_shard

from spectorch import distributed
from spectorch.curvature import CausalLM, HessianOperator
from spectorch.density import draw_generator
from spectorch.linalg import lanczos, random_start
from spectorch.nn import GPT, GPTConfig
from spectorch.sharded import ShardedHessian, sharded_density, sharded_lanczos

F64 = torch.float64
ctx = distributed.setup("gloo", timeout=120)
torch.manual_seed(0)
model = GPT(GPTConfig(vocab_size=32, n_positions=8, n_embd=16, n_layer=2, n_head=2))
model = model.to(F64).eval()
ids = torch.randint(0, 32, (6, 8), generator=torch.Generator().manual_seed(1))
everything = [ids[:2], ids[2:4], ids[4:]]
mine = [ids[ctx.rank :: ctx.world_size]]  # the ranks' data are disjoint

# the reference: one process, all the data, the exact product and the same start
reference = HessianOperator(copy.deepcopy(model), CausalLM(), everything)
g = draw_generator(0, 0)
start = random_start(sum(p.numel() for p in model.parameters()), generator=g)
full = [x.reshape(p.shape) for x, p in zip(start.split([p.numel() for p in model.parameters()]),
                                            model.parameters(), strict=True)]  # fmt: skip
exact = lanczos(reference, 12, start=start)
hv = reference.matvec(start)
fd_reference = HessianOperator(copy.deepcopy(model), CausalLM(), everything,
                               hvp="finite-difference")  # fmt: skip
fd = lanczos(fd_reference, 12, start=start)

for block in model.transformer.h:
    fully_shard(block)
fully_shard(model)
H = ShardedHessian(model, CausalLM(), mine)
piece = H.shard_full(full)
piece = piece / H.norm(piece)
product = H.gather(H.matvec(piece))
alphas, betas = sharded_lanczos(H, 12, piece)
dens = sharded_density(H, steps=12, draws=1, seed=0, progress=False)
sharded_start = H.gather(H.random_start(draw_generator(0, 0)))  # draw 0's, cut by parameter
if ctx.rank == 0:
    result = {
        "dim": H.dim,
        "local_dim": H.local_dim,
        "start_max_diff": float((sharded_start - start).abs().max()),
        "product_rel_error": float((product - hv).norm() / hv.norm()),
        "alphas": alphas.tolist(),
        "betas": betas.tolist(),
        "exact_alphas": exact.alphas.tolist(),
        "exact_betas": exact.betas.tolist(),
        "fd_alphas": fd.alphas.tolist(),
        "fd_betas": fd.betas.tolist(),
        "density_top": float(dens.top_eigenvalues(1)[0]),
    }
    with open(sys.argv[1], "w") as f:
        json.dump(result, f)
distributed.teardown()
