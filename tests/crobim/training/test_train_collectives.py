"""`broadcast_buffers` in a real 2-process gloo group: every rank ends with rank 0's BatchNorm statistics."""

from __future__ import annotations

import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, port: int, out: str) -> None:
    from crobim.training.collectives import broadcast_buffers

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        bn = torch.nn.BatchNorm2d(4)
        # Rank-specific batches: the running statistics drift apart as they do without DDP's buffer broadcast.
        for _ in range(3 + rank):
            bn(torch.randn(8, 4, 5, 5) * (rank + 1) + rank)
        before = {k: v.clone() for k, v in bn.state_dict().items()}
        broadcast_buffers(bn)
        torch.save({"before": before, "after": bn.state_dict()}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_broadcast_buffers_copies_rank0_statistics(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert not torch.equal(r0["before"]["running_mean"], r1["before"]["running_mean"])
    assert int(r1["before"]["num_batches_tracked"]) == 4
    for key, value in r0["before"].items():
        torch.testing.assert_close(r0["after"][key], value, rtol=0, atol=0, msg=key)  # rank 0 keeps its own
        torch.testing.assert_close(r1["after"][key], value, rtol=0, atol=0, msg=key)  # rank 1 gets rank 0's


def test_broadcast_buffers_without_a_process_group_is_a_no_op():
    from crobim.training.collectives import broadcast_buffers

    bn = torch.nn.BatchNorm1d(3)
    bn(torch.randn(6, 3))
    before = bn.running_mean.clone()
    broadcast_buffers(bn)
    assert torch.equal(bn.running_mean, before)
