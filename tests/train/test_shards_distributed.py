"""A 2-node run simulated on this machine: two `torchrun --nnodes 2 --node_rank {0,1}` on 127.0.0.1, one
process each, rendezvous over gloo; each rank streams one epoch of its shards (`animegen.train.shards`).
The union of the keys they see is every key of the index and the intersection is empty."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from test_shards import _write_shards

from animegen.train.shards import write_shard_index

SCRIPT = """
import json, os, sys
import torch.distributed as dist
from animegen.train.data import assign_bucket, make_buckets
from animegen.train.shards import ShardIndex, partition_batches
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
index = ShardIndex.load(sys.argv[1])
buckets = make_buckets(64 * 64, 64, 64, 128)
keys = []
for n, epoch, batch in partition_batches(index, 0, rank, world, 1, lambda s: assign_bucket((s.width, s.height), buckets)):
    if epoch:
        break
    keys += [s.key for s in batch]
dist.barrier()
json.dump({"rank": rank, "world": world, "keys": keys}, open(os.path.join(sys.argv[2], f"keys{rank}.json"), "w"))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_split_shards_without_overlap_or_loss(tmp_path):
    payloads = _write_shards(tmp_path / "wds", n_shards=5)
    write_shard_index(tmp_path / "wds")
    script = tmp_path / "stream.py"
    script.write_text(SCRIPT)
    port = str(_free_port())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(node),
         "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", port,
         str(script), str(tmp_path / "wds"), str(tmp_path)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for node in (0, 1)]
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out[-3000:]
    seen = [json.loads((tmp_path / f"keys{r}.json").read_text()) for r in (0, 1)]
    assert {s["world"] for s in seen} == {2} and {s["rank"] for s in seen} == {0, 1}
    a, b = set(seen[0]["keys"]), set(seen[1]["keys"])
    assert a | b == set(payloads)
    assert not a & b
