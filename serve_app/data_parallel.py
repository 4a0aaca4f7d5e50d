"""One data-parallel rank of a model replica: its rank in the gang, where the ranks meet, and its own bundles."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import defaultdict
from dataclasses import dataclass

# Where rank 0 of a gang publishes the address its engine listens on, in Ray's key-value store.
MEETING_KEY = "llmcluster/data-parallel/{}"
MEETING_POLL_S = 0.5


@dataclass(frozen=True)
class DataParallelRank:
    """One engine's place in a data-parallel group: vLLM's data_parallel_rank/size/address/rpc_port, and the
    bundles of the gang's placement group its workers take."""

    rank: int
    size: int
    address: str  # rank 0's node: vLLM's data-parallel group meets there
    rpc_port: int
    bundles: tuple[int, ...]
    meeting_key: str = ""  # where rank 0 published the address, withdrawn when it stops


@dataclass(frozen=True)
class Meeting:
    """What rank 0 publishes: its node's address, a free port there, and the node's Ray id."""

    address: str
    rpc_port: int
    node_id: str


def rank_bundles(rank: int, per_rank: int, bundle_nodes: dict[int, str], first_node: str) -> tuple[int, ...]:
    """The bundles of `rank`: bundle indices grouped by node, `first_node`'s first, then sliced per rank.

    Serve lists a gang's bundles replica after replica, but Ray may reserve neighbouring bundles on different
    nodes; grouping by node keeps the workers of one rank (its tensor-parallel group) on one node where they
    fit, and puts global rank 0, which hosts vLLM's rendezvous, on the node whose address rank 0 published."""
    by_node: dict[str, list[int]] = defaultdict(list)
    for index in sorted(bundle_nodes):
        by_node[bundle_nodes[index]].append(index)
    ordered = by_node.pop(first_node, [])
    for node in sorted(by_node):
        ordered += by_node[node]
    if len(ordered) < (rank + 1) * per_rank:
        raise ValueError(f"rank {rank} needs bundles {rank * per_rank}..{(rank + 1) * per_rank - 1} of a gang "
                         f"placement group of {len(ordered)}")
    return tuple(ordered[rank * per_rank:(rank + 1) * per_rank])


async def join_group(world_size: int, timeout_s: float) -> DataParallelRank:
    """This Serve replica's rank in its gang; rank 0 publishes where the group meets, the others wait for it."""
    from serve_app import serve_internals

    gang = serve_internals.gang_context()
    if gang is None:
        raise RuntimeError("a data-parallel replica must be gang-scheduled (parallelism.data > 1)")
    key = MEETING_KEY.format(gang.gang_id)
    if gang.rank == 0:
        meeting = _meeting_here()
        serve_internals.put_shared(key, json.dumps(meeting.__dict__))
    else:
        meeting = await _wait_for_meeting(key, timeout_s)
    bundle_nodes = serve_internals.placement_group_bundle_nodes(gang.pg_name)
    bundles = rank_bundles(gang.rank, world_size, bundle_nodes, meeting.node_id)
    return DataParallelRank(gang.rank, gang.world_size, meeting.address, meeting.rpc_port, bundles, key)


def leave_group(rank: DataParallelRank) -> None:
    """Rank 0 withdraws its meeting point when its replica stops."""
    from serve_app import serve_internals

    if rank.rank == 0 and rank.meeting_key:
        serve_internals.delete_shared(rank.meeting_key)


def _meeting_here() -> Meeting:
    import ray

    address = ray.util.get_node_ip_address()
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as probe:
        probe.bind((address, 0))  # a port free now; vLLM binds it moments later, as Ray Serve LLM does
        port = probe.getsockname()[1]
    return Meeting(address, port, ray.get_runtime_context().get_node_id())


async def _wait_for_meeting(key: str, timeout_s: float) -> Meeting:
    from serve_app import serve_internals

    deadline = time.monotonic() + timeout_s
    while (published := serve_internals.get_shared(key)) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"rank 0 of the data-parallel group did not publish {key} within {timeout_s:.0f}s")
        await asyncio.sleep(MEETING_POLL_S)
    return Meeting(**json.loads(published))
