"""Run a few GL-MAE steps on fixed data under ``torchrun`` (gloo, CPU) and save what the test compares.

Each rank trains on its own slice of the same fixed batch of views, with the masks made deterministic (the same
tokens masked for a sample whatever the rank), so one process with the whole batch and N processes with a slice
each must reach the same weights. Rank 0 writes ``student.pt``, ``teacher.pt`` and ``center.pt``; every rank checks
that its student and teacher equal rank 0's and writes ``rank{r}_identical.txt``; ``initial_student.pt`` holds the
start, to show the weights moved.

    torchrun --nproc_per_node=2 tests/distributed/glmae_steps.py OUT_DIR --batch 2 --steps 3
"""

from __future__ import annotations

import argparse
import os
from unittest import mock

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from custom_components.engines import GLMAETrainer, param_groups_weight_decay
from custom_components.losses import GLMAELoss
from custom_components.networks import GLMAE, EMATeacher
from custom_components.networks import vit as vit_module

SIZES = dict(hidden_size=48, mlp_dim=96, num_layers=2, num_heads=4, decoder_hidden_size=48, decoder_num_layers=1,
             decoder_num_heads=4, head_out_dim=32, head_hidden_dim=64, head_bottleneck_dim=16)


def fixed_masking(num_samples, num_tokens, mask_ratio, device):
    """The same masked tokens for every sample: deterministic across ranks and batch splits."""
    noise = torch.linspace(0, 1, num_tokens, device=device).flip(0).expand(num_samples, -1)
    num_keep = max(1, int(num_tokens * (1.0 - mask_ratio)))
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(num_samples, num_tokens, device=device)
    mask[:, :num_keep] = 0
    return ids_shuffle[:, :num_keep], torch.gather(mask, 1, ids_restore), ids_restore


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--batch", type=int, default=2, help="global batch (volumes per step, all ranks together)")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    data = [{"global_views": torch.rand(2, 1, 32, 32, 32, generator=generator),
             "local_views": torch.rand(2, 1, 16, 16, 16, generator=generator)}
            for _ in range(args.batch * args.steps)]
    per_rank = args.batch // world
    loader = [
        {k: torch.stack([d[k] for d in data[s * args.batch + rank * per_rank: s * args.batch + (rank + 1) * per_rank]])
         for k in data[0]}
        for s in range(args.steps)
    ]
    net = GLMAE(img_size=16, patch_size=8, **SIZES)
    os.makedirs(args.out_dir, exist_ok=True)
    if rank == 0:
        torch.save(net.state_dict(), os.path.join(args.out_dir, "initial_student.pt"))
    network = DistributedDataParallel(net, find_unused_parameters=True) if world > 1 else net
    teacher = EMATeacher(network)
    loss = GLMAELoss(patch_size=8, head_out_dim=32)
    # plain SGD: its update is linear in the gradient, so a wrong gradient average would show (AdamW hides scale)
    optimizer = torch.optim.SGD(param_groups_weight_decay(network, 0.0), lr=0.5)
    trainer = GLMAETrainer("cpu", 1, loader, network, teacher, optimizer, loss, ema_momentum=0.9)
    with mock.patch.object(vit_module, "random_masking", fixed_masking):
        trainer.run()

    identical = True
    for module in (net, teacher):
        for tensor in list(module.state_dict().values()):
            reference = tensor.clone()
            dist.broadcast(reference, src=0)
            identical &= torch.equal(reference, tensor)
    with open(os.path.join(args.out_dir, f"rank{rank}_identical.txt"), "w") as f:
        f.write(str(identical))
    if rank == 0:
        torch.save(net.state_dict(), os.path.join(args.out_dir, "student.pt"))
        torch.save(teacher.state_dict(), os.path.join(args.out_dir, "teacher.pt"))
        torch.save(loss.consistency.center, os.path.join(args.out_dir, "center.pt"))
    dist.barrier()  # leave together: a rank exiting while the other still talks can abort the gloo backend
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
