"""The bare data-parallel loop: the peer of Slipway's distributed fit in ``make bench-train``.

What an expert writes by hand for the same fit (:func:`benchmarks.train.distributed_throughput`):
the same MLP (``components.trainers.nets``), AdamW, cosine schedule, seeded permutation and
global batch, each rank taking its slice of every batch, gradients averaged by
DistributedDataParallel over gloo (NCCL on GPUs is not this benchmark's). Nothing else: no
progress, no epoch metrics, no checkpoints. Run by torchrun, one process per rank:

    python -m torch.distributed.run --standalone --nproc-per-node 2 \\
        -m benchmarks.ddp_bare ROWS EPOCHS BATCH
"""

from __future__ import annotations

import sys


def main(rows: int, epochs: int, batch: int) -> None:
    import torch
    import torch.distributed as dist

    from benchmarks.train import data, settings
    from components.trainers.nets import build_net

    dist.init_process_group("gloo")
    rank, size = dist.get_rank(), dist.get_world_size()
    try:
        x, y, _ = data("mlp", rows)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        torch.manual_seed(0)
        net = build_net({"task": "classification", "estimator": "mlp", "n_features": x.shape[1],
                         "n_outputs": 10, "hidden": settings("mlp", epochs, batch)["hidden"],
                         "dropout": 0.0})
        model = torch.nn.parallel.DistributedDataParallel(net) if size > 1 else net
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
        generator = torch.Generator().manual_seed(0)
        net.train()
        for _ in range(epochs):
            for idx in torch.randperm(len(xt), generator=generator).split(batch):
                mine = idx.tensor_split(size)[rank]
                loss = torch.nn.functional.cross_entropy(model(xt[mine]), yt[mine])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            sched.step()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:4]))
