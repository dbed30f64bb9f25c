"""localizer node: camera image -> top-k places in the LiDAR map (thin adapter over PlaceRecognizer).

Images arrive with sensor-data QoS into a one-slot mailbox; a worker thread always takes the newest
image (a replaced one counts as dropped), so the queue is bounded whatever the input rate.  Per image,
header = the image's stamp and frame ``frame_id``: PoseArray of the top-k (best first), the scores
PointCloud2 (conversions.HYPOTHESIS_DTYPE), and the best pose with covariance
Sigma = sum_i w_i (p_i - p_0)(p_i - p_0)^T / sum_i w_i + floor^2, w_i = exp(-(s_0 - s_i) / T)
(position; heading likewise with wrapped yaw differences), so a large score margin or tightly
clustered hypotheses give a small covariance.  Nav2 hand-off: /initialpose once when the margin
s_0 - s_1 >= min_confidence for consistent_frames consecutive frames whose best poses stay within
consistency_radius_m; ``~/relocalize`` re-arms it.  The map arrives as a latched announcement
(map_transport.py) and is opened from disk; a map that fails to load leaves the old one active.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

# Idle OpenMP threads spin by default and steal the second core from the encoder (measured: the
# encoder ran ~3x slower under load). Must be set before torch is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Pose, PoseArray, PoseWithCovarianceStamped
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import String
from std_srvs.srv import Trigger

from scmpr_ros.config import NodesConfig
from scmpr_ros.errors import InputError, ScmprError
from scmpr_ros.geometry import wrap_angle, yaw_from_quat
from scmpr_ros.msgs.conversions import HYPOTHESIS_DTYPE, image_to_rgb, points_to_cloud_msg, stamp_to_ns
from scmpr_ros.msgs.map_announcement import MapAnnouncement
from scmpr_ros.msgs.topics import (
    BEST_POSE_TOPIC,
    DIAGNOSTICS_TOPIC,
    HYPOTHESES_TOPIC,
    INITIALPOSE_TOPIC,
    MAP_TOPIC,
    SCORES_TOPIC,
)
from scmpr_ros.nodes.qos import LATCHED_QOS, OUTPUT_QOS, SENSOR_QOS

# ------------------------------------------------------------------------------ pure helpers


def pose_covariance(
    poses7: np.ndarray, scores: np.ndarray, temperature: float, pos_floor_m: float, yaw_floor_rad: float
) -> np.ndarray:
    """Row-major 6x6 covariance (x y z roll pitch yaw) of the best hypothesis (module docstring)."""
    poses7 = np.asarray(poses7, dtype=np.float64).reshape(-1, 7)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(poses7) == 0 or len(scores) != len(poses7):
        raise InputError(
            f"pose_covariance needs matching non-empty poses and scores, got {len(poses7)} and {len(scores)}"
        )
    t = max(float(temperature), 1e-9)
    w = np.exp(-(scores[0] - scores) / t)
    w /= w.sum()
    d = poses7[:, :3] - poses7[0, :3]
    cov_p = (w[:, None, None] * (d[:, :, None] * d[:, None, :])).sum(0) + (pos_floor_m**2) * np.eye(3)
    yaws = np.array([yaw_from_quat(q) for q in poses7[:, 3:7]])
    dy = wrap_angle(yaws - yaws[0])
    var_yaw = float((w * dy**2).sum()) + yaw_floor_rad**2
    cov = np.zeros((6, 6))
    cov[:3, :3] = cov_p
    cov[3, 3] = cov[4, 4] = yaw_floor_rad**2
    cov[5, 5] = var_yaw
    return cov.reshape(-1)


class InitialPoseGate:
    """Decides when a result is confident enough to hand to Nav2 (/initialpose), once per arming."""

    def __init__(self, min_confidence: float, consistent_frames: int, radius_m: float) -> None:
        self.min_confidence = float(min_confidence)
        self.consistent_frames = max(1, int(consistent_frames))
        self.radius_m = float(radius_m)
        self.streak = 0
        self.last_position: np.ndarray | None = None
        self.armed = True
        self.sent = 0

    def rearm(self) -> None:
        self.armed = True

    def update(self, best_position: np.ndarray, margin: float) -> bool:
        """Feed one frame's result; True when /initialpose must be published now."""
        p = np.asarray(best_position, dtype=np.float64)
        if not np.isfinite(margin) or margin < self.min_confidence:
            self.streak, self.last_position = 0, None
            return False
        if self.last_position is not None and np.linalg.norm(p - self.last_position) <= self.radius_m:
            self.streak += 1
        else:
            self.streak = 1
        self.last_position = p
        if self.armed and self.streak >= self.consistent_frames:
            self.armed = False
            self.sent += 1
            return True
        return False


def resolve_device(device: str) -> str:
    import torch

    if device not in ("auto", "cpu", "cuda"):
        raise ScmprError(f"parameter device={device!r}: use auto, cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise ScmprError("parameter device=cuda but torch sees no CUDA device; use device:=auto or cpu")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _pose_msg(p7) -> Pose:
    m = Pose()
    m.position.x, m.position.y, m.position.z = (float(v) for v in p7[:3])
    m.orientation.x, m.orientation.y, m.orientation.z, m.orientation.w = (float(v) for v in p7[3:7])
    return m


@dataclass
class _Active:
    announcement: MapAnnouncement
    recognizer: Any


# ----------------------------------------------------------------------------------------- node

#: ROS parameters of the localizer (defaults: scmpr_ros.config.NodesConfig; config/localization.params.yaml)
PARAMETERS = (
    "model",
    "device",
    "image_topic",
    "camera_info_topic",
    "top_k",
    "rerank_k",
    "alpha",
    "beta",
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


class Localizer(Node):
    def __init__(self, node_name: str = "localizer", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        d = NodesConfig()
        for name in PARAMETERS:
            self.declare_parameter(name, getattr(d, name))
        p = {n: self.get_parameter(n).value for n in PARAMETERS}
        if int(p["top_k"]) < 1:
            raise ScmprError(f"parameter top_k={p['top_k']} must be >= 1")
        self.p = p
        self.device = resolve_device(str(p["device"]))
        self._load_model(str(p["model"]))

        self.gate = InitialPoseGate(p["min_confidence"], p["consistent_frames"], p["consistency_radius_m"])
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

        self.pub_hyp = self.create_publisher(PoseArray, HYPOTHESES_TOPIC, OUTPUT_QOS)
        self.pub_scores = self.create_publisher(PointCloud2, SCORES_TOPIC, OUTPUT_QOS)
        self.pub_best = self.create_publisher(PoseWithCovarianceStamped, BEST_POSE_TOPIC, OUTPUT_QOS)
        self.pub_init = self.create_publisher(PoseWithCovarianceStamped, INITIALPOSE_TOPIC, OUTPUT_QOS)
        self.pub_diag = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, OUTPUT_QOS)
        self.create_subscription(String, MAP_TOPIC, self._on_map, LATCHED_QOS)
        self.create_subscription(Image, str(p["image_topic"]), self._on_image, SENSOR_QOS)
        self.create_subscription(CameraInfo, str(p["camera_info_topic"]), self._on_camera_info, SENSOR_QOS)
        self.create_service(Trigger, "~/relocalize", self._on_relocalize)
        self.create_timer(max(0.05, float(p["diagnostics_period_s"])), self._publish_diagnostics)
        self._worker = threading.Thread(target=self._run, name="scmpr_localizer_worker", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"model {p['model']} on {self.device}; images from {self.resolve_topic_name(str(p['image_topic']))}"
        )

    # ------------------------------------------------------------------------------ model/map
    def _load_model(self, path: str) -> None:
        import torch

        from scmpr_ros.config import ScmprConfig, default_config_dir, load_config
        from scmpr_ros.model import load_checkpoint, model_checksum

        if not path:
            raise ScmprError("parameter model is empty; set it to a checkpoint (e.g. models/scmpr_nano.pt)")
        if int(self.p["threads"]) > 0:
            torch.set_num_threads(int(self.p["threads"]))
        model, model_cfg, _meta = load_checkpoint(path, map_location=self.device)
        self.model = model.to(self.device).eval()
        self.model_checksum = model_checksum(self.model)
        if str(self.device) == "cpu":  # compile / load the CPU scan kernels now, not on the first image
            from scmpr_ros.model.scan_numba import warmup

            warmup(max(1, torch.get_num_threads()))
        base = default_config_dir() / "scmpr.yaml"
        cfg = load_config(base) if base.is_file() else ScmprConfig()
        self.cfg = dataclasses.replace(cfg, model=model_cfg)  # the checkpoint's model section wins

    def recognizer_config(self, num_viewpoints: int):
        """config/scmpr.yaml + the checkpoint's model section + this node's top_k / rerank_k / alpha / beta."""
        k = min(max(2, int(self.p["top_k"])), num_viewpoints)  # two at least: the score margin needs the runner-up
        retrieval = dataclasses.replace(
            self.cfg.retrieval,
            top_k=k,
            rerank_k=min(max(int(self.p["rerank_k"]), k), num_viewpoints),
            alpha=float(self.p["alpha"]),
            beta=float(self.p["beta"]),
        )
        return dataclasses.replace(self.cfg, retrieval=retrieval)

    def _open_map(self, ann: MapAnnouncement) -> None:
        from scmpr_ros.localization.recognizer import PlaceRecognizer
        from scmpr_ros.mapping.map_file import read_map

        t0 = time.perf_counter()
        try:
            if ann.model_checksum != self.model_checksum:
                raise ScmprError(
                    f"map {ann.path} was built with model {ann.model_checksum[:12]}…, this localizer "
                    f"runs {self.model_checksum[:12]}…; rebuild the map with this model"
                )
            ann.check_file()
            data = read_map(
                ann.path,
                expected_dim=self.model.descriptor_dim,
                expected_model_checksum=self.model_checksum,
                verify_checksum=bool(self.p["verify_map_checksum"]),
            )
            recognizer = PlaceRecognizer(self.model, data, self.recognizer_config(data.num_viewpoints))
        except (ScmprError, OSError, ValueError) as exc:
            self.map_error = str(exc)
            keep = f"keeping map v{self.active.announcement.version}" if self.active else "no map active"
            self.get_logger().error(f"map v{ann.version} rejected ({keep}): {exc}")
            return
        if ann.frame_id != self.p["frame_id"]:
            self.get_logger().warning(
                f"map frame {ann.frame_id!r} differs from parameter frame_id {self.p['frame_id']!r}"
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
        k = int(self.p["top_k"])
        frame = str(self.p["frame_id"])
        stamp = msg.header.stamp
        poses = np.array([np.asarray(h.pose, dtype=np.float64) for h in hyps])
        scores = np.array([float(h.score) for h in hyps])
        margin = float(scores[0] - scores[1]) if len(scores) > 1 else float("nan")
        top = hyps[:k]

        pa = PoseArray()
        pa.header.stamp, pa.header.frame_id = stamp, frame
        pa.poses = [_pose_msg(p) for p in poses[:k]]
        cloud = np.zeros(len(top), HYPOTHESIS_DTYPE)
        for j, name in enumerate(("x", "y", "z", "qx", "qy", "qz", "qw")):
            cloud[name] = poses[:k, j]
        cloud["score"] = scores[:k]
        cloud["cosine"] = [float(h.cosine) for h in top]
        cloud["psi"] = [float(h.psi) for h in top]
        cloud["viewpoint_id"] = [int(h.viewpoint_id) for h in top]
        scores_msg = points_to_cloud_msg(cloud, 0, frame)
        scores_msg.header.stamp = stamp
        best = PoseWithCovarianceStamped()
        best.header.stamp, best.header.frame_id = stamp, frame
        best.pose.pose = _pose_msg(poses[0])
        cov = pose_covariance(
            poses[:k],
            scores[:k],
            self.p["covariance_temperature"],
            self.p["position_sigma_floor_m"],
            np.radians(self.p["yaw_sigma_floor_deg"]),
        )
        best.pose.covariance = [float(c) for c in cov]
        # Scores and best pose go out before the PoseArray so a listener keyed on the PoseArray has all three.
        self.pub_scores.publish(scores_msg)
        self.pub_best.publish(best)
        self.pub_hyp.publish(pa)
        if self.gate.update(poses[0, :3], margin) and bool(self.p["publish_initialpose"]):
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
        if self.active is None:
            st.level = DiagnosticStatus.ERROR if self.map_error else DiagnosticStatus.WARN
            st.message = f"no map: {self.map_error or self.map_status}"
        elif self.map_error:
            st.level, st.message = DiagnosticStatus.WARN, f"map reload failed, still on {self.map_status}"
        else:
            st.level, st.message = DiagnosticStatus.OK, f"localizing in map {self.map_status}"
        st.values = [KeyValue(key=k, value=(f"{v:.2f}" if isinstance(v, float) else str(v))) for k, v in s.items()]
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        arr.status = [st]
        self.pub_diag.publish(arr)

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
