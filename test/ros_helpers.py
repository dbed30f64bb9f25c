"""Helpers for tests that run real rclpy nodes over loopback DDS.

The DDS domain and LOCALHOST discovery are set for the whole run in test/conftest.py (ROS_DOMAIN_ID
from the pid); each test here additionally gets its own rclpy Context and a unique node namespace,
so latched topics of one test never reach the next.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import rclpy
from rclpy.context import Context
from rclpy.executors import MultiThreadedExecutor
from rclpy.parameter import Parameter

_counter = itertools.count()


def unique_namespace() -> str:
    return f"/scmpr_test_{os.getpid()}_{next(_counter)}"


@contextlib.contextmanager
def ros_context() -> Iterator[Context]:
    ctx = Context()
    rclpy.init(context=ctx)
    try:
        yield ctx
    finally:
        rclpy.shutdown(context=ctx)


class Spinner:
    """Spin a MultiThreadedExecutor in a background thread; nodes can be added at any time."""

    def __init__(self, context: Context, threads: int = 4) -> None:
        self.executor = MultiThreadedExecutor(num_threads=threads, context=context)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._stop.is_set():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # noqa: BLE001 - context shut down under us at the end of a test
                if self._stop.is_set():
                    return
                raise

    def add(self, *nodes):
        for n in nodes:
            self.executor.add_node(n)
        return nodes[0] if len(nodes) == 1 else nodes

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)
        nodes = list(self.executor.get_nodes())
        self.executor.shutdown(timeout_sec=5.0)  # waits for callbacks still running in the pool
        for n in nodes:
            n.destroy_node()


@contextlib.contextmanager
def spinning(threads: int = 4) -> Iterator[tuple[Context, Spinner]]:
    """A fresh Context with a Spinner on it; the Spinner (and its nodes) is closed before the context shuts down."""
    with ros_context() as ctx:
        spin = Spinner(ctx, threads)
        try:
            yield ctx, spin
        finally:
            spin.close()


def start_map_server(spin: Spinner, ctx: Context, ns: str, map_file: Path | None = None, **params):
    """A map_server in ``ns`` serving ``map_file`` (none: waits for a reload), spun by ``spin``."""
    from scmpr_ros.nodes.map_server import MapServer

    over = [] if map_file is None else [Parameter("map_file", value=str(map_file))]
    over += [Parameter(k, value=v) for k, v in params.items()]
    return spin.add(MapServer(context=ctx, namespace=ns, parameter_overrides=over))


def corrupt_copy(src: Path, dst: Path, offset: int, mask: int) -> Path:
    """``src`` copied to ``dst`` with the byte at ``offset`` XOR-ed with ``mask``."""
    data = bytearray(src.read_bytes())
    data[offset] ^= mask
    dst.write_bytes(bytes(data))
    return dst


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, period: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(period)
    return bool(predicate())


def call_service(node, srv_type, name: str, request=None, timeout: float = 10.0):
    """Call a service from ``node`` (which must be spun by a Spinner) and return the response."""
    client = node.create_client(srv_type, name)
    assert client.wait_for_service(timeout_sec=timeout), f"service {name} did not appear"
    future = client.call_async(request if request is not None else srv_type.Request())
    assert wait_for(future.done, timeout), f"service {name} did not answer"
    node.destroy_client(client)
    return future.result()


# ------------------------------------------------------------------- a small world for node tests
NUM_IMAGES = 12


def _images(n=NUM_IMAGES, seed=0):
    import cv2

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        small = rng.integers(0, 256, (6, 12, 3), dtype=np.uint8)
        out.append(cv2.resize(small, (96, 48), interpolation=cv2.INTER_NEAREST))
    return out


def _map_data(descriptors, grids, protos, checksum, n):
    from scmpr_ros.geometry import quat_from_yaw
    from scmpr_ros.mapping.map_file import MapData

    poses = np.zeros((n, 7))
    poses[:, 0] = np.arange(n) * 10.0
    poses[:, 3:] = [quat_from_yaw(0.3 * i) for i in range(n)]
    return MapData(
        descriptors=np.asarray(descriptors, np.float32),
        poses=poses,
        viewpoint_ids=np.arange(n, dtype=np.int64) + 500,
        source_frames=np.arange(n, dtype=np.int64),
        semantic_grids=np.asarray(grids, bool),
        prototypes=protos,
        camera={
            "width": 96,
            "height": 48,
            "fx": 50.0,
            "fy": 50.0,
            "cx": 48.0,
            "cy": 24.0,
            "T_cam_velo": np.eye(4).tolist(),
        },
        model_config={},
        model_checksum=checksum,
    )


def build_test_world(d):
    """A real small SCM-PR model (random init, seed 0) saved as a checkpoint, and a map whose viewpoint i
    (id 500+i, at x = 10 i m, yaw 0.3 i rad) holds the recognizer's own descriptor and grid of test image i.
    Returns (checkpoint path, map path, images, the same map claiming another model)."""
    import torch

    from scmpr_ros.config import ModelConfig, ScmprConfig
    from scmpr_ros.localization.recognizer import PlaceRecognizer
    from scmpr_ros.mapping.map_file import write_map
    from scmpr_ros.model import SCMPRModel, load_checkpoint, model_checksum, save_checkpoint

    torch.manual_seed(0)
    cfg = ModelConfig(image_height=64, image_width=128, descriptor_dim=64, feature_dim=32, netvlad_clusters=4)
    ckpt = d / "model.safetensors"
    save_checkpoint(ckpt, SCMPRModel(cfg).eval(), cfg)
    model, _, _ = load_checkpoint(ckpt)
    checksum = model_checksum(model)
    rng = np.random.default_rng(1)
    protos = rng.normal(size=(model.num_classes, model.feature_dim)).astype(np.float32)
    images = _images()
    n = len(images)
    # Pass 1: any map with the right shapes gives the recognizer; pass 2 stores its descriptors and grids.
    desc0 = rng.normal(size=(n, model.descriptor_dim))
    desc0 /= np.linalg.norm(desc0, axis=1, keepdims=True)
    provisional = _map_data(desc0, np.zeros((n, 4, 8, model.num_classes)), protos, checksum, n)
    results = PlaceRecognizer(model, provisional, ScmprConfig()).recognize_batch(images)
    desc = np.stack([r.descriptor for r in results])
    grids = np.stack([r.query_grid for r in results])
    map_path = d / "town.scmpr-map"
    write_map(map_path, _map_data(desc, grids, protos, checksum, n))
    other = d / "other.scmpr-map"
    write_map(other, _map_data(desc, grids, protos, "another-model", n))
    return ckpt, map_path, images, other
