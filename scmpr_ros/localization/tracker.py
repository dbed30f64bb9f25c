"""The filter fed from a live stream: odometry messages and camera frames arrive on their own clocks.

``DriveTracker`` buffers odometry poses (x, y, yaw of the vehicle in the odometry frame, by stamp) and,
for each camera frame, integrates all odometry up to the image's stamp (interpolated between the two
odometry samples around it) as one body-frame increment before the measurement update:

- odometry that is late (its newest sample is older than the image) is integrated as far as it goes;
  the rest of the motion is integrated with the next frame, once it has arrived;
- odometry older than what was already integrated (out of order) is refused and counted;
- frames older than the last integrated one (out of order) are refused and counted;
- without odometry (``use_odometry=False``) the filter moves along the map's road graph over the time
  between frames (image-only motion).

No rclpy: the localizer node converts messages and calls this.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass

import numpy as np

from scmpr_ros.config import FilterConfig
from scmpr_ros.errors import InputError
from scmpr_ros.geometry import wrap_angle
from scmpr_ros.localization.filter import FilterEstimate, MapLocalizationFilter, body_delta

MAX_BUFFERED_ODOMETRY = 2000  # samples kept (200 s at 10 Hz); older ones are dropped once integrated


@dataclass
class TrackerCounts:
    odometry_received: int = 0
    odometry_refused: int = 0  # older than what was already integrated
    frames_refused: int = 0  # image stamp older than the last frame's
    frames_without_odometry: int = 0  # frames that found no new odometry up to their stamp


class DriveTracker:
    """``add_odometry(stamp_ns, x, y, yaw)`` from any thread; ``on_frame(stamp_ns, ids, scores)`` per image."""

    def __init__(self, viewpoint_poses7: np.ndarray, cfg: FilterConfig, use_odometry: bool) -> None:
        self.filter = MapLocalizationFilter(viewpoint_poses7, cfg)
        self.use_odometry = bool(use_odometry)
        self.counts = TrackerCounts()
        self._lock = threading.Lock()
        self._stamps: list[int] = []
        self._poses: list[np.ndarray] = []
        self._integrated: tuple[int, np.ndarray] | None = None  # (stamp, pose) the filter has moved to
        self._last_frame_ns: int | None = None

    def add_odometry(self, stamp_ns: int, x: float, y: float, yaw: float) -> bool:
        """Buffer one odometry pose; False (and counted) when it is older than what was integrated."""
        pose = np.array([x, y, yaw], dtype=np.float64)
        if not np.all(np.isfinite(pose)):
            raise InputError(f"odometry pose {pose.tolist()} is not finite")
        with self._lock:
            self.counts.odometry_received += 1
            if self._integrated is not None and stamp_ns <= self._integrated[0]:
                self.counts.odometry_refused += 1
                return False
            i = bisect.bisect_right(self._stamps, stamp_ns)
            self._stamps.insert(i, int(stamp_ns))
            self._poses.insert(i, pose)
            if len(self._stamps) > MAX_BUFFERED_ODOMETRY:
                del self._stamps[0], self._poses[0]
            return True

    @property
    def integrated_until_ns(self) -> int | None:
        """Stamp of the odometry pose the filter has been moved to."""
        return None if self._integrated is None else self._integrated[0]

    def reset(self) -> None:
        """Forget the filter's state; the next frame initialises it from its hypotheses."""
        with self._lock:
            self.filter.reset()

    def on_frame(self, stamp_ns: int, hyp_ids: np.ndarray, hyp_scores: np.ndarray) -> FilterEstimate | None:
        """Motion up to ``stamp_ns``, then the measurement with the first ``filter.hypothesis_count`` of the
        hypotheses (best first); None when the frame is refused or has nothing to start the filter from."""
        count = self.filter.cfg.hypothesis_count(image_only=not self.use_odometry)
        hyp_ids, hyp_scores = np.asarray(hyp_ids)[:count], np.asarray(hyp_scores)[:count]
        with self._lock:
            if self._last_frame_ns is not None and stamp_ns <= self._last_frame_ns:
                self.counts.frames_refused += 1
                return None
            if self.filter.initialized:
                self._move_to(stamp_ns)
            else:
                self._integrated = self._pose_at(stamp_ns) or self._integrated
            self._last_frame_ns = int(stamp_ns)
            if not self.filter.initialized and len(hyp_ids) == 0:
                return None
            return self.filter.update(hyp_ids, hyp_scores)

    def _move_to(self, stamp_ns: int) -> None:
        if not self.use_odometry:
            self.filter.predict_graph(max(stamp_ns - self._last_frame_ns, 0) / 1e9)
            return
        target = self._pose_at(stamp_ns)
        if target is None or self._integrated is None:
            self.counts.frames_without_odometry += 1
            self._integrated = target or self._integrated
            return
        if target[0] > self._integrated[0]:
            self.filter.predict_odometry(body_delta(self._integrated[1], target[1]))
            self._integrated = target
        else:
            self.counts.frames_without_odometry += 1
        self._drop_integrated()

    def _pose_at(self, stamp_ns: int) -> tuple[int, np.ndarray] | None:
        """(stamp, pose) of the odometry at ``stamp_ns`` (interpolated), or at its newest sample before it."""
        i = bisect.bisect_right(self._stamps, stamp_ns)
        if i == 0:
            return None
        t0, p0 = self._stamps[i - 1], self._poses[i - 1]
        if i == len(self._stamps) or t0 == stamp_ns:
            return t0, p0
        t1, p1 = self._stamps[i], self._poses[i]
        a = (stamp_ns - t0) / (t1 - t0)
        yaw = p0[2] + a * float(wrap_angle(p1[2] - p0[2]))
        return int(stamp_ns), np.array([*(p0[:2] + a * (p1[:2] - p0[:2])), float(wrap_angle(yaw))])

    def _drop_integrated(self) -> None:
        """Samples before the integrated one are no longer needed (keep one for interpolation)."""
        i = bisect.bisect_right(self._stamps, self._integrated[0])
        if i > 1:
            del self._stamps[: i - 1], self._poses[: i - 1]
