"""Worker failure: a two-node Ray cluster on 127.0.0.1 loses a node mid-run; the dataset is whole.

Runs its own cluster (ray.cluster_utils.Cluster), so the session's `ray_local` connection is
closed first and reopened afterwards for the tests that follow.
"""

from __future__ import annotations

import os
import threading
import time

import pytest
import ray

from dutrain.config import load_config
from dutrain.config.generate import GenerateConfig
from dutrain.data.generate import generate
from dutrain.data.plan import plan_crops, split_of
from dutrain.data.sources import BUILTIN_IMAGES, train_only
from dutrain.io.dataset import read_table


@pytest.fixture
def two_nodes():
    from ray.cluster_utils import Cluster
    had_session = ray.is_initialized()
    if had_session:
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": False, "node_ip_address": "127.0.0.1"})
    worker = cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    try:
        yield cluster, worker
    finally:
        ray.shutdown()
        cluster.shutdown()
        if had_session:  # same arguments as the conftest's ray_local
            ray.init(address="local", num_cpus=2, include_dashboard=False,
                     namespace="dutrain-tests", log_to_driver=False, _node_ip_address="127.0.0.1")


def test_node_removed_mid_run_still_gives_every_sample_once(two_nodes, tmp_path):
    cluster, worker = two_nodes
    assert ray.cluster_resources()["CPU"] == 2
    out = tmp_path / "ds"
    overrides = [f"output={out}", "image_size=96", "samples=480", "rows_per_shard=32",
                 "progress=false", "tracking.enabled=false"]
    cfg = load_config(GenerateConfig, overrides=overrides)
    box: dict = {}

    def work():
        try:
            box["result"] = generate(cfg)
        except BaseException as exc:  # surfaced in the main thread
            box["error"] = exc

    t = threading.Thread(target=work)
    t.start()
    deadline = time.time() + 120
    parts: list[str] = []
    while time.time() < deadline and t.is_alive():
        parts = [f for f in os.listdir(out) if f.startswith("part-")] if out.exists() else []
        if len(parts) >= 2:
            break
        time.sleep(0.05)
    assert 2 <= len(parts) < 15, f"node not removed mid-run: {parts}"
    cluster.remove_node(worker, allow_graceful=False)
    t.join(240)
    assert not t.is_alive(), "generate did not finish after the node was removed"
    assert "error" not in box, box.get("error")

    # The GCS marks a killed raylet dead after its health checks fail, which can take longer
    # than the (short) run itself: wait for it instead of reading the table once.
    deadline = time.time() + 60
    while ray.cluster_resources().get("CPU") != 1 and time.time() < deadline:
        time.sleep(0.2)
    assert ray.cluster_resources().get("CPU") == 1
    splits = {f"builtin/{n}": "train" if train_only(f"builtin:{n}") else
              split_of(f"builtin/{n}", cfg.val_fraction, cfg.test_fraction)
              for n in BUILTIN_IMAGES}
    expected = {i for c in plan_crops(splits, 480, cfg.ood_fraction, cfg.variants_per_crop,
                                      cfg.seed) for i in c.sample_ids()}
    ids = read_table(str(out), columns=["sample_id"]).column("sample_id").to_pylist()
    assert len(ids) == 480 and set(ids) == expected
    assert box["result"].rows == 480
