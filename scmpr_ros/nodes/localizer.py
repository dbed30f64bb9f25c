"""localizer node: camera image -> top-k places in the LiDAR map (a thin adapter over the library).

Images arrive (sensor-data QoS, or reliable with ``image_reliability``) into a one-slot mailbox; a
worker thread always takes the newest image (a replaced one counts as dropped), so the queue is
bounded whatever the input rate.  Per image, header = the image's stamp and frame ``frame_id``:
PoseArray of the top-k (best first), the scores PointCloud2 (conversions.HYPOTHESIS_DTYPE), and the
best pose with the covariance of localization/confidence.py.  Nav2 hand-off: /initialpose through
confidence.InitialPoseGate; ``~/relocalize`` re-arms it.  The map arrives as a latched announcement
(msgs/map_announcement.py) and is opened from disk with localization/session.py (the same function
``scmpr evaluate`` uses); a map that fails to load leaves the old one active.

Parameters: the NodesConfig keys in PARAMETERS, plus ``retrieval.*`` (RetrievalConfig), declared with
the defaults of scmpr_ros.config.load_config() and checked again when set at run time.
"""

from __future__ import annotations

import collections
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseArray, PoseWithCovarianceStamped
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import String
from std_srvs.srv import Trigger

from scmpr_ros.config import ScmprConfig, load_config
from scmpr_ros.errors import InputError, ScmprError
from scmpr_ros.localization.confidence import InitialPoseGate, pose_covariance
from scmpr_ros.localization.session import load_model, open_recognizer
from scmpr_ros.msgs.conversions import image_to_rgb, stamp_to_ns
from scmpr_ros.msgs.map_announcement import MapAnnouncement
from scmpr_ros.msgs.poses import hypotheses_cloud_msg, pose_array_msg, pose_with_covariance_msg
from scmpr_ros.msgs.topics import (
    BEST_POSE_TOPIC,
    DIAGNOSTICS_TOPIC,
    HYPOTHESES_TOPIC,
    INITIALPOSE_TOPIC,
    MAP_TOPIC,
    SCORES_TOPIC,
)
from scmpr_ros.nodes.parameters import (
    add_config_validator,
    config_from_parameters,
    declare_config_parameters,
    parameter_names,
)
from scmpr_ros.nodes.qos import LATCHED_QOS, OUTPUT_QOS, SENSOR_QOS, image_qos

#: The localizer's own parameters (NodesConfig keys); the retrieval section comes as retrieval.<key>.
PARAMETERS = (
    "model",
    "device",
    "image_topic",
    "camera_info_topic",
    "image_reliability",
    "no_image_warn_s",
    "frame_id",
    "publish_initialpose",
    "min_confidence",
    "consistent_frames",
    "consistency_radius_m",
    "diagnostics_period_s",
    "threads",
    "verify_map_checksum",
    "covariance_temperature",
    "position_sigma_floor_m",
    "yaw_sigma_floor_deg",
)
SECTIONS = ("retrieval",)


@dataclass
class _Active:
    announcement: MapAnnouncement
    recognizer: Any


class Localizer(Node):
    def __init__(self, node_name: str = "localizer", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        base = load_config()
        self._param_names = parameter_names(base, "nodes", PARAMETERS, SECTIONS)
        declare_config_parameters(self, base, "nodes", self._param_names)
        self.cfg: ScmprConfig = config_from_parameters(self, base, "nodes", self._param_names)
        n = self.cfg.nodes
        self.model = load_model(n.model, n.device, n.threads)
        self.device = self.model.device
        self.cfg = self.model.config(self.cfg)
        add_config_validator(self, "nodes", self._param_names, lambda: self.cfg, self._set_config)

        self.gate = InitialPoseGate(n.min_confidence, n.consistent_frames, n.consistency_radius_m)
        self._cond = threading.Condition()
        self._pending: tuple[Image, float] | None = None
        self._pending_map: MapAnnouncement | None = None
        self._stop = False
        self.active: _Active | None = None
        self.map_status = "waiting for map announcement on " + self.resolve_topic_name(MAP_TOPIC)
        self.map_error = ""
        self.received = self.processed = self.dropped = self.rejected = self.skipped_no_map = 0
        self.latencies_ms: collections.deque[float] = collections.deque(maxlen=500)
        self.compute_ms: collections.deque[float] = collections.deque(maxlen=500)
        # per processed image (monotonic s): stamp ns, arrival, worker start, recognize start/end, published
        self.trace: collections.deque[tuple] = collections.deque(maxlen=20000)
        self.last_reject = ""
        self.camera_info: CameraInfo | None = None
        self.last_image_stamp = None
        self.busy = False
        self._publisher_seen_since: float | None = None
        self._create_interfaces()
        self._worker = threading.Thread(target=self._run, name="scmpr_localizer_worker", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"model {n.model} on {self.device}; images from {self.resolve_topic_name(n.image_topic)} "
            f"({n.image_reliability})"
        )

    def _create_interfaces(self) -> None:
        n = self.cfg.nodes
        self.pub_hyp = self.create_publisher(PoseArray, HYPOTHESES_TOPIC, OUTPUT_QOS)
        self.pub_scores = self.create_publisher(PointCloud2, SCORES_TOPIC, OUTPUT_QOS)
        self.pub_best = self.create_publisher(PoseWithCovarianceStamped, BEST_POSE_TOPIC, OUTPUT_QOS)
        self.pub_init = self.create_publisher(PoseWithCovarianceStamped, INITIALPOSE_TOPIC, OUTPUT_QOS)
        self.pub_diag = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, OUTPUT_QOS)
        self.create_subscription(String, MAP_TOPIC, self._on_map, LATCHED_QOS)
        self.create_subscription(Image, n.image_topic, self._on_image, image_qos(n.image_reliability))
        self.create_subscription(CameraInfo, n.camera_info_topic, self._on_camera_info, SENSOR_QOS)
        self.create_service(Trigger, "~/relocalize", self._on_relocalize)
        self.create_timer(n.diagnostics_period_s, self._publish_diagnostics)

    def _set_config(self, cfg: ScmprConfig) -> None:
        """A run-time parameter change that passed the checks; retrieval settings apply to the next image."""
        self.cfg = self.model.config(cfg)
        with self._cond:
            if self.active is not None and self._pending_map is None:
                self._pending_map = self.active.announcement  # re-open the same map with the new settings
                self._cond.notify()

    # ------------------------------------------------------------------------------ model/map
    def _open_map(self, ann: MapAnnouncement) -> None:
        t0 = time.perf_counter()
        try:
            if ann.model_checksum != self.model.checksum:
                raise ScmprError(
                    f"map {ann.path} was built with model {ann.model_checksum[:12]}…, this localizer "
                    f"runs {self.model.checksum[:12]}…; rebuild the map with this model"
                )
            ann.check_file()
            recognizer = open_recognizer(self.model, ann.path, self.cfg, self.cfg.nodes.verify_map_checksum)
        except (ScmprError, OSError, ValueError) as exc:
            self.map_error = str(exc)
            keep = f"keeping map v{self.active.announcement.version}" if self.active else "no map active"
            self.get_logger().error(f"map v{ann.version} rejected ({keep}): {exc}")
            return
        if ann.frame_id != self.cfg.nodes.frame_id:
            self.get_logger().warning(
                f"map frame {ann.frame_id!r} differs from parameter frame_id {self.cfg.nodes.frame_id!r}"
            )
        self.active = _Active(ann, recognizer)
        self.map_error = ""
        self.map_status = f"v{ann.version} {ann.path} ({ann.num_viewpoints} viewpoints)"
        self.get_logger().info(f"map {self.map_status} active after {time.perf_counter() - t0:.2f} s")

    # ------------------------------------------------------------------------------ callbacks
    def _on_map(self, msg: String) -> None:
        try:
            ann = MapAnnouncement.from_json(msg.data)
        except InputError as exc:
            self.map_error = str(exc)
            self.get_logger().error(str(exc))
            return
        if (
            self.active is not None
            and self.active.announcement.version == ann.version
            and self.active.announcement.sha256 == ann.sha256
        ):
            return
        with self._cond:
            self._pending_map = ann
            self._cond.notify()

    def _on_image(self, msg: Image) -> None:
        now = time.monotonic()
        with self._cond:
            self.received += 1
            self.last_image_stamp = msg.header.stamp
            if self._pending is not None:
                self.dropped += 1
            self._pending = (msg, now)
            self._cond.notify()

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self.camera_info = msg

    def _on_relocalize(self, request, response):
        self.gate.rearm()
        response.success = True
        response.message = "the next confident, consistent result will be published on /initialpose"
        return response

    # --------------------------------------------------------------------------------- worker
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stop and self._pending is None and self._pending_map is None:
                    self._cond.wait(timeout=0.5)
                if self._stop:
                    return
                ann, self._pending_map = self._pending_map, None
                item = None
                if ann is None:
                    item, self._pending = self._pending, None
                self.busy = True
            try:
                if ann is not None:
                    self._open_map(ann)
                elif item is not None:
                    self._process(*item)
            except Exception as exc:  # noqa: BLE001 - the node must keep running; report and go on
                self.get_logger().error(f"processing failed: {type(exc).__name__}: {exc}")
            finally:
                self.busy = False

    def _process(self, msg: Image, t_received: float) -> None:
        t_start = time.monotonic()
        try:
            rgb = image_to_rgb(msg)
        except InputError as exc:
            self.rejected += 1
            self.last_reject = str(exc)
            self.get_logger().warning(f"image rejected: {exc}", throttle_duration_sec=2.0)
            return
        active = self.active
        if active is None:
            self.skipped_no_map += 1
            self.get_logger().warning(f"no map yet ({self.map_status}); image skipped", throttle_duration_sec=5.0)
            return
        if self.camera_info is not None and (self.camera_info.width, self.camera_info.height) != (
            msg.width,
            msg.height,
        ):
            self.get_logger().warning(
                f"camera_info is {self.camera_info.width}x{self.camera_info.height} but images are "
                f"{msg.width}x{msg.height}",
                throttle_duration_sec=10.0,
            )
        t0 = time.monotonic()
        result = active.recognizer.recognize(rgb)
        t1 = time.monotonic()
        hyps = list(result.hypotheses)
        if not hyps:
            self.get_logger().warning("the recognizer returned no hypotheses", throttle_duration_sec=5.0)
            return
        self._publish(msg, hyps)
        t2 = time.monotonic()
        self.processed += 1
        self.compute_ms.append((t1 - t0) * 1e3)  # encoder + search + re-rank
        self.latencies_ms.append((t2 - t_received) * 1e3)  # arrival -> outputs published
        self.trace.append((stamp_to_ns(msg.header.stamp), t_received, t_start, t0, t1, t2))

    def _publish(self, msg: Image, hyps: list) -> None:
        n = self.cfg.nodes
        top = hyps[: self.cfg.retrieval.top_k]
        poses = np.array([np.asarray(h.pose, dtype=np.float64) for h in top])
        scores = np.array([float(h.score) for h in top])
        margin = float(scores[0] - scores[1]) if len(scores) > 1 else float("nan")
        cov = pose_covariance(
            poses, scores, n.covariance_temperature, n.position_sigma_floor_m, np.radians(n.yaw_sigma_floor_deg)
        )
        stamp = msg.header.stamp
        best = pose_with_covariance_msg(poses[0], cov, stamp, n.frame_id)
        # Scores and best pose go out before the PoseArray so a listener keyed on the PoseArray has all three.
        self.pub_scores.publish(hypotheses_cloud_msg(top, stamp, n.frame_id))
        self.pub_best.publish(best)
        self.pub_hyp.publish(pose_array_msg(poses, stamp, n.frame_id))
        if self.gate.update(poses[0, :3], margin) and n.publish_initialpose:
            self.pub_init.publish(best)
            self.get_logger().info(f"initial pose published (margin {margin:.3f}, streak {self.gate.streak})")

    # ---------------------------------------------------------------------------- diagnostics
    def stats(self) -> dict[str, Any]:
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.zeros(0)
        comp = np.array(self.compute_ms) if self.compute_ms else np.zeros(0)
        pct = lambda a, q: float(np.percentile(a, q)) if len(a) else float("nan")  # noqa: E731
        return {
            "received": self.received,
            "processed": self.processed,
            "dropped": self.dropped,
            "rejected": self.rejected,
            "skipped_no_map": self.skipped_no_map,
            "latency_p50_ms": pct(lat, 50),
            "latency_p95_ms": pct(lat, 95),
            "compute_p50_ms": pct(comp, 50),
            "compute_p95_ms": pct(comp, 95),
            "device": self.device,
            "map_status": self.map_status,
            "map_error": self.map_error,
            "initialpose_sent": self.gate.sent,
            "last_reject": self.last_reject,
        }

    def _publish_diagnostics(self) -> None:
        s = self.stats()
        st = DiagnosticStatus()
        st.name = f"{self.get_fully_qualified_name()}: place recognition"
        st.hardware_id = s["device"]
        starved = self._images_starved()
        if self.active is None:
            st.level = DiagnosticStatus.ERROR if self.map_error else DiagnosticStatus.WARN
            st.message = f"no map: {self.map_error or self.map_status}"
        elif starved:
            st.level, st.message = DiagnosticStatus.WARN, starved
        elif self.map_error:
            st.level, st.message = DiagnosticStatus.WARN, f"map reload failed, still on {self.map_status}"
        else:
            st.level, st.message = DiagnosticStatus.OK, f"localizing in map {self.map_status}"
        st.values = [KeyValue(key=k, value=(f"{v:.2f}" if isinstance(v, float) else str(v))) for k, v in s.items()]
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        arr.status = [st]
        self.pub_diag.publish(arr)

    def _images_starved(self) -> str:
        """A WARN text when a publisher is matched on the image topic but no image has arrived for a while."""
        n = self.cfg.nodes
        if self.received or self.count_publishers(n.image_topic) == 0:
            self._publisher_seen_since = None
            return ""
        now = time.monotonic()
        if self._publisher_seen_since is None:
            self._publisher_seen_since = now
        waited = now - self._publisher_seen_since
        if waited < n.no_image_warn_s:
            return ""
        return (
            f"publisher matched on {self.resolve_topic_name(n.image_topic)}, no images received for {waited:.0f} s: "
            "large images need the shipped DDS profile (config/fastdds_shm.xml) on the publisher too"
        )

    def idle(self) -> bool:
        """True when no image or map is waiting and none is being processed."""
        with self._cond:
            return self._pending is None and self._pending_map is None and not self.busy

    def destroy_node(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._worker.is_alive() and threading.current_thread() is not self._worker:
            self._worker.join(timeout=10.0)
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    from scmpr_ros.nodes.executors import run_node_main

    return run_node_main("localizer", Localizer, args)


if __name__ == "__main__":
    sys.exit(main())
