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
from typing import Callable, Iterator

import rclpy
from rclpy.context import Context
from rclpy.executors import MultiThreadedExecutor

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
