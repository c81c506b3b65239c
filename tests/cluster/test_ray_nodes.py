"""The two-node loopback cluster fixture: nodes, resources, placement seen through Ray's state API, clean stop."""

from __future__ import annotations

import sys
import textwrap

import pytest

from tests.fixtures.ray_cluster import NODE_IP, process_group_alive, start_ray_cluster

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]

_PROBE = textwrap.dedent(
    """
    import ray
    ray.init(address="{address}", log_to_driver=False)

    @ray.remote(num_cpus=1)
    def read_stage():
        return ray.get_runtime_context().get_node_id()

    @ray.remote(num_cpus=0.5, resources={{"inference": 1}})
    class Inference:
        def node(self):
            return ray.get_runtime_context().get_node_id()

    actor = Inference.options(name="probe-inference").remote()
    print("READ", ray.get(read_stage.options(name="probe-read").remote()))
    print("INFER", ray.get(actor.node.remote()))
    """
)


def test_cluster_nodes_and_placement(ray_cluster) -> None:
    nodes = {n.node_id: n for n in ray_cluster.list_state("nodes")}
    head = nodes[ray_cluster.head.node_id]
    worker = nodes[ray_cluster.worker.node_id]
    assert head.is_head_node and not worker.is_head_node
    assert head.resources_total["CPU"] == 1 and "inference" not in head.resources_total
    assert worker.resources_total["inference"] == 1
    assert head.node_ip == worker.node_ip == NODE_IP  # loopback, not the machine address

    # A driver in another process: the reading task can only fit on the head (the worker's single CPU is half
    # taken by the inference actor), the actor only on the node advertising `inference`.
    result = ray_cluster.run([sys.executable, "-c", _PROBE.format(address=ray_cluster.gcs_address)])
    assert result.returncode == 0, result.stderr[-3000:]
    printed = dict(line.split() for line in result.stdout.splitlines() if line.startswith(("READ", "INFER")))
    assert printed == {"READ": ray_cluster.head.node_id, "INFER": ray_cluster.worker.node_id}
    # The same facts from Ray's own state API.
    tasks = ray_cluster.list_state("tasks", [("name", "=", "probe-read")])
    assert [t.node_id for t in tasks] == [ray_cluster.head.node_id]
    actors = ray_cluster.list_state("actors", [("name", "=", "probe-inference")])
    assert [a.node_id for a in actors] == [ray_cluster.worker.node_id]


def test_stop_ends_every_node_process(moto_process) -> None:
    cluster = start_ray_cluster(env=moto_process.env, worker_resources={"inference": 1})
    pgids = [node.process.pid for node in cluster.nodes]
    cluster.stop()
    assert not any(process_group_alive(pgid) for pgid in pgids)
    assert not cluster.temp_dir.exists()
