"""`scmpr replay` / `scmpr demo` / `scmpr benchmark ros` without launch_ros: the launch files' nodes in one process.

map_server, localizer and bag_player (the same classes as the console scripts) plus a recorder node run
in one rclpy Context on one executor (executors.py) over loopback DDS, configured by the same ROS params
file as launch/localization.launch.py (``--ros-args --params-file``; per-run values as overrides).
The recorder keys everything on the image stamp: end-to-end latency = PoseArray received - the same
image received by the recorder.  Scoring uses the bag's ground-truth odometry and training.metrics.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from geometry_msgs.msg import PoseArray, PoseWithCovarianceStamped
from rclpy.context import Context
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image, PointCloud2

from scmpr_ros.errors import ScmprError
from scmpr_ros.msgs.conversions import read_hypotheses, stamp_to_ns
from scmpr_ros.msgs.topics import (
    BEST_POSE_TOPIC,
    FILTERED_POSE_TOPIC,
    GROUND_TRUTH_TOPIC,
    HYPOTHESES_TOPIC,
    ODOM_TOPIC,
    SCORES_TOPIC,
)
from scmpr_ros.nodes.executors import make_executor
from scmpr_ros.nodes.qos import OUTPUT_QOS, SENSOR_QOS


def default_params_file() -> Path:
    from scmpr_ros.config import default_config_dir

    return default_config_dir() / "localization.params.yaml"


def rss_mb() -> float:
    """Resident set size of this process in MB (Linux /proc; ru_maxrss elsewhere)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3


class Recorder(Node):
    """Collects the localizer's outputs and the image arrival times, keyed by image stamp (ns)."""

    def __init__(self, image_topic: str, keep_results: bool = True, **kwargs) -> None:
        super().__init__("scmpr_recorder", **kwargs)
        self.keep_results = keep_results  # False for long benchmarks: only timings, so RSS measures the nodes
        self.lock = threading.Lock()
        self.image_times: dict[int, float] = {}  # latest arrival per stamp (a looping bag repeats stamps)
        self.results: dict[int, dict[str, Any]] = {}  # latest outputs per stamp
        self.latencies_ms: list[float] = []  # one per PoseArray: its arrival - its image's arrival
        self.events: list[tuple[int, float, float]] = []  # per PoseArray: stamp, image arrival, result arrival
        self.result_count = 0
        self.create_subscription(Image, image_topic, self._on_image, SENSOR_QOS)
        self.create_subscription(PoseArray, HYPOTHESES_TOPIC, self._on_poses, OUTPUT_QOS)
        self.create_subscription(PointCloud2, SCORES_TOPIC, self._on_scores, OUTPUT_QOS)
        self.create_subscription(PoseWithCovarianceStamped, BEST_POSE_TOPIC, self._on_best, OUTPUT_QOS)
        self.create_subscription(PoseWithCovarianceStamped, FILTERED_POSE_TOPIC, self._on_filtered, OUTPUT_QOS)

    def _entry(self, stamp) -> dict[str, Any]:
        return self.results.setdefault(stamp_to_ns(stamp), {})

    def _on_image(self, msg: Image) -> None:
        with self.lock:
            self.image_times[stamp_to_ns(msg.header.stamp)] = time.monotonic()

    def _on_poses(self, msg: PoseArray) -> None:
        t = time.monotonic()
        stamp = stamp_to_ns(msg.header.stamp)
        with self.lock:
            self.result_count += 1
            t_image = self.image_times.get(stamp) if self.keep_results else self.image_times.pop(stamp, None)
            if t_image is not None:
                self.latencies_ms.append((t - t_image) * 1e3)
                self.events.append((stamp, t_image, t))
            if self.keep_results:
                poses = np.array(
                    [
                        [
                            p.position.x,
                            p.position.y,
                            p.position.z,
                            p.orientation.x,
                            p.orientation.y,
                            p.orientation.z,
                            p.orientation.w,
                        ]
                        for p in msg.poses
                    ]
                )
                self._entry(msg.header.stamp).update(poses=poses, t_result=t, frame_id=msg.header.frame_id)

    def _on_scores(self, msg: PointCloud2) -> None:
        if self.keep_results:
            h = read_hypotheses(msg)
            with self.lock:
                self._entry(msg.header.stamp)["hypotheses"] = h

    def _on_best(self, msg: PoseWithCovarianceStamped) -> None:
        if self.keep_results:
            with self.lock:
                self._entry(msg.header.stamp)["covariance"] = np.array(msg.pose.covariance)

    def _on_filtered(self, msg: PoseWithCovarianceStamped) -> None:
        if self.keep_results:
            p = msg.pose.pose.position
            with self.lock:
                self._entry(msg.header.stamp)["filtered_xyz"] = np.array([p.x, p.y, p.z])

    def complete(self) -> dict[int, dict[str, Any]]:
        with self.lock:
            return {k: dict(v) for k, v in self.results.items() if "poses" in v and "hypotheses" in v}


@dataclass
class ReplayResult:
    bag: str
    map_file: str
    model: str
    rate: float
    images_published: int
    play_wall_s: float  # first to last published message
    results: dict[int, dict[str, Any]]  # image stamp ns -> poses (k,7), hypotheses, covariance, t_result
    result_count: int  # PoseArrays received (a looping bag gives several per stamp)
    latencies_ms: np.ndarray  # end-to-end, one per PoseArray
    localizer: dict[str, Any]  # Localizer.stats() at the end
    events: list = field(default_factory=list)  # recorder: (stamp, image arrival, PoseArray arrival)
    trace: list = field(default_factory=list)  # localizer: (stamp, arrival, start, recognize 0/1, published)
    rss_mb: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, MB)

    def e2e_latency_ms(self) -> np.ndarray:
        return np.sort(np.asarray(self.latencies_ms, dtype=np.float64))

    def overhead_ms(self) -> np.ndarray:
        """Per image: end-to-end latency minus mailbox wait minus recognizer compute = the ROS cost
        (DDS in and out, message conversion, publishing)."""
        by_stamp: dict[int, list] = {}
        for row in self.trace:
            by_stamp.setdefault(row[0], []).append(row)
        out = []
        for stamp, t_img, t_res in self.events:
            done = [r for r in by_stamp.get(stamp, []) if r[4] <= t_res]  # recognized before the result arrived
            if done:
                _, t_recv, t_start, t0, t1, _t2 = done[-1]
                out.append(((t_res - t_img) - (t_start - t_recv) - (t1 - t0)) * 1e3)
        return np.sort(np.asarray(out, dtype=np.float64))

    def processed_hz(self) -> float:
        return self.result_count / self.play_wall_s if self.play_wall_s > 0 else float("nan")

    def score(self, threshold_m: float = 5.0, ns: tuple[int, ...] = (1, 5)) -> dict[str, Any]:
        """Recall@N of the published hypotheses against the bag's ground truth (evaluation.replay_scoring)."""
        from scmpr_ros.bags.reader import ground_truth_positions
        from scmpr_ros.evaluation.replay_scoring import score_replay

        score = score_replay(self.results, ground_truth_positions(self.bag), self.map_file, threshold_m, ns)
        score["images_published"] = self.images_published
        return score

    def summary(self) -> dict[str, Any]:
        lat = self.e2e_latency_ms()
        pct = lambda q: float(np.percentile(lat, q)) if lat.size else float("nan")  # noqa: E731
        ov = self.overhead_ms()
        opct = lambda q: float(np.percentile(ov, q)) if ov.size else float("nan")  # noqa: E731
        rss = [m for _, m in self.rss_mb]
        return {
            "images_published": self.images_published,
            "results": self.result_count,
            "dropped": int(self.localizer["dropped"]),
            "rejected": int(self.localizer["rejected"]),
            "processed_hz": self.processed_hz(),
            "input_hz": self.images_published / self.play_wall_s if self.play_wall_s > 0 else float("nan"),
            "play_wall_s": self.play_wall_s,
            "e2e_latency_ms": {"p50": pct(50), "p95": pct(95), "max": float(lat.max()) if lat.size else float("nan")},
            "compute_ms": {"p50": self.localizer["compute_p50_ms"], "p95": self.localizer["compute_p95_ms"]},
            "ros_overhead_ms": {"p50": opct(50), "p95": opct(95)},
            "device": self.localizer["device"],
            "rss_mb": {
                "start": rss[0] if rss else float("nan"),
                "end": rss[-1] if rss else float("nan"),
                "max": max(rss) if rss else float("nan"),
            },
        }


@dataclass
class _Session:
    """One replay's rclpy context and executor, its nodes (destroyed in reverse order) and RSS samples."""

    ctx: Context
    executor: Any
    t_start: float  # time.monotonic() at the start
    nodes: list[Node] = field(default_factory=list)
    rss: list[tuple[float, float]] = field(default_factory=list)  # (seconds since t_start, MB)

    def add(self, node: Any) -> Any:
        self.nodes.append(node)
        return node

    def sample_rss(self) -> None:
        self.rss.append((time.monotonic() - self.t_start, rss_mb()))

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=5.0)
        for n in reversed(self.nodes):
            n.destroy_node()
        rclpy.shutdown(context=self.ctx)


@dataclass(frozen=True)
class _Playback:
    """The nodes a playback watches and the image topic it counts."""

    player: Any  # BagPlayer
    localizer: Any  # Localizer
    recorder: Recorder
    image_topic: str
    total: int  # images in the bag


def _check_replay_args(
    bag: str | Path, params_file: str | Path | None, rate: float, loop: bool, duration_s: float | None
) -> tuple[Path, Any]:
    """(params file, bag info); raises before anything starts."""
    from scmpr_ros.bags.reader import bag_info

    params = Path(params_file) if params_file else default_params_file()
    if not params.is_file():
        raise ScmprError(f"params file {params} not found")
    if not rate > 0:
        raise ScmprError(f"--rate {rate} must be > 0")
    info = bag_info(bag)  # fails early with a clear message
    if loop and duration_s is None:
        raise ScmprError("looping playback needs a duration")
    return params, info


def _localizer_params(
    model: str | Path, device: str | None, overrides: dict[str, Any] | None, info: Any
) -> list[Parameter]:
    """model, device, the bag's simulated odometry for the filter (unless overridden), then the overrides."""
    over = [Parameter("model", value=str(model))]
    if device:
        over.append(Parameter("device", value=device))
    if ODOM_TOPIC in info.topics and "odom_topic" not in (overrides or {}):
        over.append(Parameter("odom_topic", value=ODOM_TOPIC))
    return over + [Parameter(k, value=v) for k, v in (overrides or {}).items()]


def _image_topic(bag: str | Path, info: Any, localizer: Any) -> str:
    image_topic = localizer.cfg.nodes.image_topic
    if image_topic not in info.topics:
        raise ScmprError(
            f"{bag} has no {image_topic} (topics: {sorted(info.topics)}); name the image topic with --image-topic"
        )
    return image_topic


def _wait_for_map(executor: Any, localizer: Any, map_timeout_s: float) -> None:
    deadline = time.monotonic() + map_timeout_s
    while localizer.active is None and time.monotonic() < deadline:
        if localizer.map_error:
            raise ScmprError(f"localizer rejected the map: {localizer.map_error}")
        executor.spin_once(timeout_sec=0.05)
    if localizer.active is None:
        raise ScmprError(f"localizer got no map within {map_timeout_s:.0f} s ({localizer.map_status})")


def _rate_for_image_hz(bag: str | Path, info: Any, image_topic: str, image_rate_hz: float) -> float:
    """The playback rate that makes the bag's images arrive at ``image_rate_hz``."""
    n_img, span = info.topics[image_topic].count, (info.end_ns - info.start_ns) / 1e9
    if n_img < 2 or span <= 0 or not image_rate_hz > 0:
        raise ScmprError(f"cannot play {bag} at {image_rate_hz} images/s ({n_img} images over {span:.2f} s)")
    return float(image_rate_hz) / ((n_img - 1) / span)


def _player_params(
    bag: str | Path, info: Any, localizer: Any, image_topic: str, rate: float, loop: bool
) -> list[Parameter]:
    wanted = [
        image_topic,
        localizer.cfg.nodes.camera_info_topic,
        GROUND_TRUTH_TOPIC,
        localizer.cfg.nodes.odom_topic,
    ]  # what the nodes + scoring use
    return [
        Parameter("bag", value=str(bag)),
        Parameter("topics", value=[t for t in wanted if t in info.topics]),
        Parameter("rate", value=float(rate)),
        Parameter("min_subscribers", value=2),
        Parameter("loop", value=bool(loop)),
    ]


def _play(
    session: _Session,
    pb: _Playback,
    duration_s: float | None,
    settle_s: float,
    progress: Callable[[int, int], None] | None,
) -> float | None:
    """Spin until the bag is played and its results are in; returns the first publish's wall time."""
    player, localizer = pb.player, pb.localizer
    last_sample = time.monotonic()
    t_play = None
    idle_since = None
    while True:
        session.executor.spin_once(timeout_sec=0.02)
        now = time.monotonic()
        if now - last_sample >= 1.0:
            session.rss.append((now - session.t_start, rss_mb()))
            last_sample = now
            if progress is not None:
                progress(player.published_per_topic.get(pb.image_topic, 0), pb.total)
        if t_play is None and player.first_publish_wall is not None:
            t_play = player.first_publish_wall
        if duration_s is not None and t_play is not None and now - t_play >= duration_s:
            player.stop()
        if player.done.is_set() and localizer.idle():
            idle_since = idle_since or now
            # done when every published image reached the localizer and every processed one has its
            # outputs here; or settle_s after the localizer went idle (best-effort images can be lost)
            all_in = localizer.received >= player.published_per_topic.get(pb.image_topic, 0)
            if (all_in and pb.recorder.result_count >= localizer.processed) or now - idle_since >= settle_s:
                return t_play
        else:
            idle_since = None


def _replay_result(
    session: _Session,
    pb: _Playback,
    t_play: float | None,
    bag: str | Path,
    map_file: str | Path,
    model: str | Path,
    rate: float,
) -> ReplayResult:
    play_end = pb.player.last_publish_wall or time.monotonic()
    session.sample_rss()
    recorder = pb.recorder
    return ReplayResult(
        bag=str(bag),
        map_file=str(map_file),
        model=str(model),
        rate=float(rate),
        images_published=pb.player.published_per_topic.get(pb.image_topic, 0),
        play_wall_s=max(0.0, play_end - (t_play or play_end)),
        results=recorder.complete(),
        result_count=recorder.result_count,
        latencies_ms=np.array(recorder.latencies_ms),
        events=list(recorder.events),
        trace=list(pb.localizer.trace),
        localizer=pb.localizer.stats(),
        rss_mb=session.rss,
    )


def run_replay(
    bag: str | Path,
    map_file: str | Path,
    model: str | Path,
    *,
    params_file: str | Path | None = None,
    rate: float = 1.0,
    image_rate_hz: float | None = None,
    device: str | None = None,
    duration_s: float | None = None,
    loop: bool = False,
    localizer_overrides: dict[str, Any] | None = None,
    map_timeout_s: float = 120.0,
    settle_s: float = 2.0,
    threads: int = 4,
    executor_kind: str = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> ReplayResult:
    """Replay ``bag`` through map_server + localizer; return what the localizer published.

    ``rate`` scales the bag's timing; ``image_rate_hz`` instead picks the scale that makes the images
    arrive at that many Hz."""
    from scmpr_ros.nodes.bag_player import BagPlayer
    from scmpr_ros.nodes.localizer import Localizer
    from scmpr_ros.nodes.map_server import MapServer

    params, info = _check_replay_args(bag, params_file, rate, loop, duration_s)
    ctx = Context()
    rclpy.init(context=ctx, args=["--ros-args", "--params-file", str(params)])
    session = _Session(ctx, make_executor(ctx, executor_kind, threads), time.monotonic())
    session.rss.append((0.0, rss_mb()))
    try:
        server = session.add(MapServer(context=ctx, parameter_overrides=[Parameter("map_file", value=str(map_file))]))
        if server.announcement is None:
            raise ScmprError(f"map_server could not load {map_file}: {server.last_error}")
        over = _localizer_params(model, device, localizer_overrides, info)
        localizer = session.add(Localizer(context=ctx, parameter_overrides=over))
        image_topic = _image_topic(bag, info, localizer)
        recorder = session.add(Recorder(image_topic, keep_results=not loop, context=ctx))
        for n in session.nodes:
            session.executor.add_node(n)
        _wait_for_map(session.executor, localizer, map_timeout_s)
        if image_rate_hz is not None:
            rate = _rate_for_image_hz(bag, info, image_topic, image_rate_hz)
        player_params = _player_params(bag, info, localizer, image_topic, rate, loop)
        player = session.add(BagPlayer(context=ctx, parameter_overrides=player_params))
        session.executor.add_node(player)
        pb = _Playback(player, localizer, recorder, image_topic, info.topics[image_topic].count)
        t_play = _play(session, pb, duration_s, settle_s, progress)
        return _replay_result(session, pb, t_play, bag, map_file, model, rate)
    finally:
        session.close()
