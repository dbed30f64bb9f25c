"""Which rclpy executor runs the nodes: rclpy's EventsExecutor (C++, event driven) when present, else
MultiThreadedExecutor.  The localizer computes on its own worker thread and the bag_player plays on
its own thread, so callbacks only hand data over and one executor thread suffices.  Measured on the
2-core box (replay at 4 images/s, nano model): ROS overhead per image (end-to-end minus mailbox wait
minus encoder) p50 2.7-3.1 ms / p95 8-11 ms with EventsExecutor vs 9-10 / 19-27 ms with
MultiThreadedExecutor (its Python wait-set rebuild per callback costs most under CPU load).
EventsExecutor.spin() busy-waits and misses SIGINT in rclpy 9.1, so nodes spin with spin_until_shutdown
(spin_once with a timeout, checking the context), which idles at ~1 % CPU and exits on Ctrl-C.
"""

from __future__ import annotations

import threading

import rclpy
from rclpy.context import Context
from rclpy.executors import Executor, MultiThreadedExecutor


def make_executor(context: Context | None = None, kind: str = "auto", threads: int = 4) -> Executor:
    """kind: auto (events when available) | events | multi."""
    if kind not in ("auto", "events", "multi"):
        raise ValueError(f"executor kind {kind!r}: use auto, events or multi")
    if kind in ("auto", "events"):
        try:
            from rclpy.experimental import EventsExecutor
        except ImportError:
            if kind == "events":
                raise
        else:
            return EventsExecutor(context=context)
    return MultiThreadedExecutor(num_threads=threads, context=context)


def spin_until_shutdown(
    executor: Executor, context: Context | None = None, done: threading.Event | None = None, period_s: float = 0.1
) -> None:
    """Run callbacks until the context shuts down (Ctrl-C, SIGTERM) or ``done`` is set."""
    while rclpy.ok(context=context) and not (done is not None and done.is_set()):
        executor.spin_once(timeout_sec=period_s)


def run_node_main(name: str, node_factory, args: list[str] | None = None, linger_s: float = 0.0) -> int:
    """The body of every node's ``main()``: the Fast DDS profile for large images (nodes/dds.py), init,
    spin until Ctrl-C / SIGTERM (or the node's ``done`` event, when it has one), clean shutdown.
    A user-facing ScmprError prints one line and exits 2."""
    import sys
    import time

    from rclpy.executors import ExternalShutdownException

    from scmpr_ros.errors import ScmprError
    from scmpr_ros.nodes.dds import apply_dds_profile, log_runtime_once

    apply_dds_profile()  # before rclpy.init: Fast DDS reads it when the first participant is created
    rclpy.init(args=args)
    node = None
    try:
        node = node_factory()
        log_runtime_once(node.get_logger())  # rclpy, cv_bridge and the DDS profile in use (once per process)
        executor = make_executor()
        executor.add_node(node)
        spin_until_shutdown(executor, done=getattr(node, "done", None))
        time.sleep(linger_s)
    except (KeyboardInterrupt, ExternalShutdownException):  # Ctrl-C / SIGTERM
        pass
    except ScmprError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    except Exception:  # noqa: BLE001 - a shutdown during start-up invalidates the context: exit quietly
        if rclpy.ok():
            raise
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0
