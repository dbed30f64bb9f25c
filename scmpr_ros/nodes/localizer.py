"""localizer node: camera image -> top-k places in the LiDAR map (a thin adapter over the library).

Images arrive (sensor-data QoS, or reliable with ``image_reliability``) into a one-slot mailbox; a
worker thread always takes the newest image (a replaced one counts as dropped), so the queue is
bounded whatever the input rate.  Per image, header = the image's stamp and frame ``frame_id``:
PoseArray of the top-k (best first), the scores PointCloud2 (conversions.HYPOTHESIS_DTYPE), and the
best pose with the covariance of localization/confidence.py.  With ``filter_enabled`` each frame's
hypotheses also update the localization filter along the drive (localization/tracker.py: odometry from
``odom_topic`` integrated up to the image's stamp, or image-only road-graph motion when it is empty),
published on ``~/filtered_pose``.  Nav2 hand-off: /initialpose once per arming, when the filter has
converged (without the filter: confidence.InitialPoseGate); ``~/relocalize`` re-arms it and resets the
filter.  The map arrives as a latched announcement
(msgs/map_announcement.py) and is opened from disk with localization/session.py (the same function
``scmpr evaluate`` uses); a map that fails to load leaves the old one active.

A LifecycleNode (nodes/lifecycle.py): on_configure reads the parameters, loads the model and subscribes
to the map announcement; on_activate subscribes to images and enables the (lifecycle) publishers and the
diagnostics; on_deactivate undoes that; on_cleanup releases the model and the map.  ``autostart``
(default true) does configure + activate in the constructor; false leaves it to a lifecycle manager.

Parameters: the NodesConfig keys in PARAMETERS, plus ``retrieval.*`` (RetrievalConfig), declared with
the defaults of scmpr_ros.config.load_config() and checked again when set at run time, and ``autostart``.
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
from nav_msgs.msg import Odometry
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.lifecycle import LifecycleState, TransitionCallbackReturn
from rclpy.subscription import Subscription
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import String
from std_srvs.srv import Trigger

from scmpr_ros.config import ScmprConfig, load_config
from scmpr_ros.errors import InputError, ScmprError
from scmpr_ros.localization.confidence import InitialPoseGate, pose_covariance
from scmpr_ros.localization.session import load_model, open_recognizer
from scmpr_ros.localization.tracker import DriveTracker
from scmpr_ros.msgs.conversions import image_to_rgb, stamp_to_ns
from scmpr_ros.msgs.map_announcement import MapAnnouncement
from scmpr_ros.msgs.poses import (
    filtered_pose_msg,
    hypotheses_cloud_msg,
    odometry_xyyaw,
    pose_array_msg,
    pose_with_covariance_msg,
)
from scmpr_ros.msgs.topics import (
    BEST_POSE_TOPIC,
    DIAGNOSTICS_TOPIC,
    HYPOTHESES_TOPIC,
    INITIALPOSE_TOPIC,
    MAP_TOPIC,
    SCORES_TOPIC,
)
from scmpr_ros.nodes.dds import log_runtime_once
from scmpr_ros.nodes.lifecycle import AUTOSTART, ReleasingLifecycleNode, autostart, transition_failed
from scmpr_ros.nodes.parameters import (
    add_config_validator,
    config_from_parameters,
    declare_config_parameters,
    parameter_names,
)
from scmpr_ros.nodes.qos import LATCHED_QOS, ODOMETRY_QOS, OUTPUT_QOS, SENSOR_QOS, image_qos

#: The localizer's own parameters (NodesConfig keys); the retrieval section comes as retrieval.<key>.
PARAMETERS = (
    "model",
    "device",
    "image_topic",
    "camera_info_topic",
    "image_reliability",
    "no_image_warn_s",
    "odom_topic",
    "filter_enabled",
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
SECTIONS = ("retrieval", "filter")


@dataclass
class _Active:
    announcement: MapAnnouncement
    recognizer: Any
    tracker: DriveTracker | None  # the filter over this map (None with filter_enabled false)


class Localizer(ReleasingLifecycleNode):
    """A managed node: on_configure loads the model and opens the map subscription, on_activate
    subscribes to images and publishes, on_deactivate stops that, on_cleanup releases all.  With the
    ``autostart`` parameter (default true) the constructor configures and activates it, raising
    ScmprError when that fails, as a plain node would; with false a lifecycle manager drives it."""

    RELEASED = "model and map"

    def __init__(self, node_name: str = "localizer", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self._base = load_config()
        self._param_names = parameter_names(self._base, "nodes", PARAMETERS, SECTIONS)
        declare_config_parameters(self, self._base, "nodes", self._param_names)
        self.declare_parameter(AUTOSTART, True)
        self.cfg: ScmprConfig = self._base  # the parameters' values from on_configure on
        add_config_validator(self, "nodes", self._param_names, lambda: self.cfg, self._set_config)
        self._cond = threading.Condition()
        self._worker: threading.Thread | None = None
        self._stop = False
        self._pub: dict[str, Any] = {}
        self._entities: list[Any] = []  # subscriptions and services of the configured node
        self._image_sub = self._diag_timer = None
        self.model = None
        self.device = ""
        self.transition_error = ""
        self._reset_state()
        self.received = self.processed = self.dropped = self.rejected = self.skipped_no_map = self.lost = 0
        self.initialpose_sent = 0
        self._losses: collections.deque[tuple[float, int]] = collections.deque(maxlen=1000)  # (monotonic s, lost)
        self.latencies_ms: collections.deque[float] = collections.deque(maxlen=500)
        self.compute_ms: collections.deque[float] = collections.deque(maxlen=500)
        # per processed image (monotonic s): stamp ns, arrival, worker start, recognize start/end, published
        self.trace: collections.deque[tuple] = collections.deque(maxlen=20000)
        self.last_reject = ""
        self.camera_info: CameraInfo | None = None
        self.last_image_stamp = None
        self.busy = False
        log_runtime_once(self.get_logger())
        if self.get_parameter(AUTOSTART).value:
            autostart(self)

    def _reset_state(self) -> None:
        """What a configure starts from: no map, nothing pending."""
        self._pending: tuple[Image, float] | None = None
        self._pending_map: MapAnnouncement | None = None
        self.active: _Active | None = None
        self.gate: InitialPoseGate | None = None
        self._filter_armed = True  # /initialpose from the filter, once per arming
        self.filter_state: dict[str, Any] = {}
        self.map_status = "waiting for map announcement on " + self.resolve_topic_name(MAP_TOPIC)
        self.map_error = ""
        self._publisher_seen_since: float | None = None
        self._received_at_activation = 0

    # ------------------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Parameters, model, publishers, the map subscription and the worker; images wait for on_activate."""
        try:
            self.cfg = config_from_parameters(self, self._base, "nodes", self._param_names)
            n = self.cfg.nodes
            self.model = load_model(n.model, n.device, n.threads)
            self.device = self.model.device
            self.cfg = self.model.config(self.cfg)
            self.gate = InitialPoseGate(n.min_confidence, n.consistent_frames, n.consistency_radius_m)
            self._create_interfaces()
            self._start_worker()
        except Exception as exc:  # noqa: BLE001 - any failure leaves the node unconfigured, with the reason
            return transition_failed(self, "configure", exc, self._release)
        self.transition_error = ""
        self.get_logger().info(
            f"configured: model {n.model} on {self.device}; images from {self.resolve_topic_name(n.image_topic)} "
            f"({n.image_reliability}) once active"
        )
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        n = self.cfg.nodes
        try:
            self._image_sub = self.create_subscription(
                Image,
                n.image_topic,
                self._on_image,
                image_qos(n.image_reliability),
                event_callbacks=SubscriptionEventCallbacks(message_lost=self._on_message_lost),
            )
            self._diag_timer = self.create_timer(n.diagnostics_period_s, self._publish_diagnostics)
        except Exception as exc:  # noqa: BLE001 - e.g. an invalid topic name: stay inactive, say why
            return transition_failed(self, "activate", exc, self._stop_images)
        self._publisher_seen_since = None
        self._received_at_activation = self.received
        self.get_logger().info(f"active: localizing images from {self._image_sub.topic_name}")
        return super().on_activate(state)  # enables the lifecycle publishers

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_images()
        self.get_logger().info("inactive: image subscription closed, outputs stopped")
        return super().on_deactivate(state)

    def _create_interfaces(self) -> None:
        n = self.cfg.nodes
        pub = self.create_lifecycle_publisher
        self._pub = {
            "hyp": pub(PoseArray, HYPOTHESES_TOPIC, OUTPUT_QOS),
            "scores": pub(PointCloud2, SCORES_TOPIC, OUTPUT_QOS),
            "best": pub(PoseWithCovarianceStamped, BEST_POSE_TOPIC, OUTPUT_QOS),
            "init": pub(PoseWithCovarianceStamped, INITIALPOSE_TOPIC, OUTPUT_QOS),
            "diag": pub(DiagnosticArray, DIAGNOSTICS_TOPIC, OUTPUT_QOS),
        }
        self._pub["filtered"] = pub(PoseWithCovarianceStamped, "~/filtered_pose", OUTPUT_QOS)
        self._entities = [
            self.create_subscription(String, MAP_TOPIC, self._on_map, LATCHED_QOS),
            self.create_subscription(CameraInfo, n.camera_info_topic, self._on_camera_info, SENSOR_QOS),
            self.create_service(Trigger, "~/relocalize", self._on_relocalize),
        ]
        if n.odom_topic:
            self._entities.append(self.create_subscription(Odometry, n.odom_topic, self._on_odometry, ODOMETRY_QOS))

    def _start_worker(self) -> None:
        self._stop = False
        self._worker = threading.Thread(target=self._run, name="scmpr_localizer_worker", daemon=True)
        self._worker.start()

    def _stop_images(self) -> None:
        if self._image_sub is not None:
            self.destroy_subscription(self._image_sub)
            self._image_sub = None
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
            self._diag_timer = None
        with self._cond:
            self._pending = None

    def _release(self) -> None:
        """Stop the worker and destroy what on_configure / on_activate created (any state; idempotent)."""
        self._stop_images()
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        worker, self._worker = self._worker, None
        if worker is not None and worker.is_alive() and threading.current_thread() is not worker:
            worker.join(timeout=10.0)
        for entity in self._entities:
            if isinstance(entity, Subscription):
                self.destroy_subscription(entity)
            else:
                self.destroy_service(entity)
        for publisher in self._pub.values():
            self.destroy_lifecycle_publisher(publisher)
        self._entities, self._pub = [], {}
        self.model = None
        self._reset_state()

    def _set_config(self, cfg: ScmprConfig) -> None:
        """A run-time parameter change that passed the checks; retrieval settings apply to the next image.
        Unconfigured, it is only checked: on_configure reads every parameter again."""
        model = self.model
        self.cfg = model.config(cfg) if model is not None else cfg
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
            recognizer = open_recognizer(
                self.model, ann.path, self.cfg, self.cfg.nodes.verify_map_checksum, self._filter_hypotheses()
            )
        except (ScmprError, OSError, ValueError) as exc:
            self.map_error = str(exc)
            keep = f"keeping map v{self.active.announcement.version}" if self.active else "no map active"
            self.get_logger().error(f"map v{ann.version} rejected ({keep}): {exc}")
            return
        if ann.frame_id != self.cfg.nodes.frame_id:
            self.get_logger().warning(
                f"map frame {ann.frame_id!r} differs from parameter frame_id {self.cfg.nodes.frame_id!r}"
            )
        tracker = None
        if self.cfg.nodes.filter_enabled:
            tracker = DriveTracker(recognizer.map.poses, self.cfg.filter, use_odometry=bool(self.cfg.nodes.odom_topic))
        self.active = _Active(ann, recognizer, tracker)
        self.map_error = ""
        self.map_status = f"v{ann.version} {ann.path} ({ann.num_viewpoints} viewpoints)"
        self.get_logger().info(f"map {self.map_status} active after {time.perf_counter() - t0:.2f} s")

    def _filter_hypotheses(self) -> int:
        """How many hypotheses per image the filter weighs (0 without the filter)."""
        n = self.cfg.nodes
        return self.cfg.filter.hypothesis_count(image_only=not n.odom_topic) if n.filter_enabled else 0

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

    def _on_message_lost(self, info) -> None:
        """DDS saw images on the topic that never arrived whole (e.g. large images without the shipped profile)."""
        with self._cond:
            self.lost += int(info.total_count_change)
            self._losses.append((time.monotonic(), self.lost))

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self.camera_info = msg

    def _on_odometry(self, msg: Odometry) -> None:
        active = self.active
        if active is not None and active.tracker is not None:
            active.tracker.add_odometry(stamp_to_ns(msg.header.stamp), *odometry_xyyaw(msg))

    def _on_relocalize(self, request, response):
        self.gate.rearm()
        self._filter_armed = True
        active = self.active
        if active is not None and active.tracker is not None:
            active.tracker.reset()
        response.success = True
        response.message = "filter reset; the next confident result will be published on /initialpose"
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
        # Scores, best pose and filtered pose go out before the PoseArray, so a listener keyed on the
        # PoseArray (the replay recorder) has them all.
        pub = self._pub  # lifecycle publishers: they publish only while the node is active
        pub["scores"].publish(hypotheses_cloud_msg(top, stamp, n.frame_id))
        pub["best"].publish(best)
        tracker = self.active.tracker if self.active is not None else None
        if tracker is not None:
            self._publish_filtered(tracker, stamp, hyps)  # the tracker takes the filter's share of them
        pub["hyp"].publish(pose_array_msg(poses, stamp, n.frame_id))
        if tracker is None and self.gate.update(poses[0, :3], margin) and n.publish_initialpose:
            pub["init"].publish(best)
            self.initialpose_sent += 1
            self.get_logger().info(f"initial pose published (margin {margin:.3f}, streak {self.gate.streak})")

    def _publish_filtered(self, tracker: DriveTracker, stamp, hyps: list) -> None:
        """One filter step with this frame's hypotheses; ~/filtered_pose, and /initialpose once converged."""
        n = self.cfg.nodes
        ids = np.array([h.index for h in hyps], dtype=np.int64)
        estimate = tracker.on_frame(stamp_to_ns(stamp), ids, np.array([h.score for h in hyps]))
        if estimate is None:
            return
        msg = filtered_pose_msg(estimate, stamp, n.frame_id)
        self._pub["filtered"].publish(msg)
        self.filter_state = {
            "filter_converged": estimate.converged,
            "filter_spread_m": estimate.spread_m,
            "filter_mode_weight": estimate.mode_weight,
            "filter_particles": tracker.filter.cfg.num_particles,
            "odometry_received": tracker.counts.odometry_received,
            "odometry_refused": tracker.counts.odometry_refused,
            "frames_refused": tracker.counts.frames_refused,
        }
        if estimate.converged and self._filter_armed and n.publish_initialpose:
            self._filter_armed = False
            self._pub["init"].publish(msg)
            self.initialpose_sent += 1
            self.get_logger().info(f"initial pose published (filter converged, spread {estimate.spread_m:.1f} m)")

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
            "lost": self.lost,  # images DDS reported lost before they reached us (message_lost event)
            "skipped_no_map": self.skipped_no_map,
            "latency_p50_ms": pct(lat, 50),
            "latency_p95_ms": pct(lat, 95),
            "compute_p50_ms": pct(comp, 50),
            "compute_p95_ms": pct(comp, 95),
            "device": self.device,
            "map_status": self.map_status,
            "map_error": self.map_error,
            "initialpose_sent": self.initialpose_sent,
            "last_reject": self.last_reject,
        } | self.filter_state

    def _publish_diagnostics(self) -> None:
        s = self.stats()
        st = DiagnosticStatus()
        st.name = f"{self.get_fully_qualified_name()}: place recognition"
        st.hardware_id = s["device"]
        starved = self._images_starved() or self._images_lost()
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
        self._pub["diag"].publish(arr)

    def _images_starved(self) -> str:
        """A WARN text when a publisher is on the image topic but no image has arrived (since activation)
        for no_image_warn_s: a QoS mismatch, or large images without the shipped DDS profile."""
        n, sub = self.cfg.nodes, self._image_sub
        on_topic = self.count_publishers(n.image_topic)
        if sub is None or self.received > self._received_at_activation or on_topic == 0:
            self._publisher_seen_since = None
            return ""
        now = time.monotonic()
        if self._publisher_seen_since is None:
            self._publisher_seen_since = now
        waited = now - self._publisher_seen_since
        if waited < n.no_image_warn_s:
            return ""
        if sub.get_publisher_count() == 0:
            return (
                f"{on_topic} publisher(s) on {sub.topic_name} but none matched for {waited:.0f} s: QoS incompatible "
                f"with image_reliability={n.image_reliability} (a best-effort camera needs best_effort)"
            )
        return (
            f"publisher matched on {sub.topic_name}, no images received for {waited:.0f} s: large images need "
            "the shipped DDS profile (config/fastdds_shm.xml, FASTDDS_DEFAULT_PROFILES_FILE) on the publisher too"
        )

    def _images_lost(self) -> str:
        """A WARN text when DDS lost images in the last no_image_warn_s."""
        window = self.cfg.nodes.no_image_warn_s
        now = time.monotonic()
        with self._cond:  # the event callback may append meanwhile (multi-threaded executor)
            losses, total = list(self._losses), self.lost
        if not any(now - t <= window for t, _ in losses):
            return ""
        earlier = [lost for t, lost in losses if now - t > window]
        count = total - (earlier[-1] if earlier else 0)
        return (
            f"{count} images lost in DDS transport in the last {window:.0f} s ({self.received} received in all): "
            "large images need the shipped DDS profile (config/fastdds_shm.xml, FASTDDS_DEFAULT_PROFILES_FILE) "
            "on the publisher too"
        )

    def idle(self) -> bool:
        """True when no image or map is waiting and none is being processed."""
        with self._cond:
            return self._pending is None and self._pending_map is None and not self.busy

    def destroy_node(self) -> None:
        self._release()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    from scmpr_ros.nodes.executors import run_node_main

    return run_node_main("localizer", Localizer, args)


if __name__ == "__main__":
    sys.exit(main())
