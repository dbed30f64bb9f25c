"""map_server node: the single owner of the active map (Nav2 map_server pattern, latched outputs).

Parameters: map_file, frame_id, max_published_poses, autostart.  On start and on ``~/reload_map``
(std_srvs/Trigger, after ``ros2 param set /map_server map_file NEW``) it validates the file with
scmpr_ros.mapping.map_file.read_map; only a valid map replaces the active one (a failed reload
keeps the old map and says why in the response).  Publishes, latched: the announcement on
``scmpr/map`` (see map_transport.py: path + sha256 + version, not the payload), the viewpoint poses
(geometry_msgs/PoseArray, decimated to max_published_poses) and an RViz MarkerArray.

A LifecycleNode (nodes/lifecycle.py): on_configure loads and validates map_file (a map that fails to load
fails the transition: the node stays unconfigured and logs why), on_activate publishes it, on_cleanup
releases it; ``autostart`` (default true) configures and activates in the constructor.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from geometry_msgs.msg import Pose, PoseArray
from rclpy.lifecycle import LifecycleState, TransitionCallbackReturn
from std_msgs.msg import String
from std_srvs.srv import Trigger
from visualization_msgs.msg import Marker, MarkerArray

from scmpr_ros.config import ScmprConfig, load_config
from scmpr_ros.errors import ScmprError
from scmpr_ros.msgs.map_announcement import MapAnnouncement, stored_checksum
from scmpr_ros.msgs.poses import pose_msg
from scmpr_ros.msgs.topics import MAP_MARKERS_TOPIC, MAP_POSES_TOPIC, MAP_TOPIC
from scmpr_ros.nodes.dds import log_runtime_once
from scmpr_ros.nodes.lifecycle import AUTOSTART, ReleasingLifecycleNode, autostart, transition_failed
from scmpr_ros.nodes.parameters import add_config_validator, config_from_parameters, declare_config_parameters
from scmpr_ros.nodes.qos import LATCHED_QOS

#: ROS parameters of map_server (NodesConfig keys; defaults from scmpr_ros.config.load_config())
PARAMETERS = ("map_file", "frame_id", "max_published_poses")


def load_and_validate(path: str, frame_id: str, version: int):
    """Read and validate a map file; return (MapData, MapAnnouncement).  Raises ScmprError."""
    from scmpr_ros.mapping.map_file import read_map

    if not path:
        raise ScmprError("parameter map_file is empty; set it to a .scmpr-map file built with `scmpr build-map`")
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise ScmprError(f"map_file {p} does not exist")
    st = os.stat(p)
    digest = stored_checksum(p)
    data = read_map(p, verify_checksum=True)  # one pass over the content against the stored sha256
    if stored_checksum(p) != digest or os.stat(p).st_size != st.st_size:
        raise ScmprError(f"map_file {p} changed while it was being loaded; try the reload again")
    ann = MapAnnouncement(
        version=version,
        path=str(p),
        sha256=digest,
        size_bytes=int(st.st_size),
        mtime_ns=int(st.st_mtime_ns),
        frame_id=frame_id,
        num_viewpoints=data.num_viewpoints,
        descriptor_dim=data.descriptor_dim,
        model_checksum=str(data.model_checksum),
    )
    return data, ann


class MapServer(ReleasingLifecycleNode):
    """A managed node: on_configure reads the parameters and loads + validates map_file (an empty one
    waits for ~/reload_map), on_activate publishes the map (latched), on_cleanup releases it.
    ``autostart`` (default true) configures and activates in the constructor, raising ScmprError when
    that fails; false leaves the transitions to a lifecycle manager."""

    RELEASED = "map"

    def __init__(self, node_name: str = "map_server", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self._base = load_config()
        self.cfg = self._base  # the parameters' values from on_configure on
        declare_config_parameters(self, self._base, "nodes", list(PARAMETERS))
        self.declare_parameter(AUTOSTART, True)
        add_config_validator(self, "nodes", list(PARAMETERS), lambda: self.cfg, self._set_config)
        self._lock = threading.Lock()
        self.version = 0  # keeps counting across cleanups, so a localizer always sees a new map as new
        self.map_data = None
        self.announcement: MapAnnouncement | None = None
        self.last_error = self.transition_error = ""
        self._pubs: dict[str, Any] = {}
        self._reload_srv = None
        log_runtime_once(self.get_logger())
        if self.get_parameter(AUTOSTART).value:
            autostart(self)

    def _set_config(self, cfg: ScmprConfig) -> None:
        self.cfg = cfg

    # ------------------------------------------------------------------------------- lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.cfg = config_from_parameters(self, self._base, "nodes", list(PARAMETERS))
            self._pubs = {
                "ann": self.create_lifecycle_publisher(String, MAP_TOPIC, LATCHED_QOS),
                "poses": self.create_lifecycle_publisher(PoseArray, MAP_POSES_TOPIC, LATCHED_QOS),
                "markers": self.create_lifecycle_publisher(MarkerArray, MAP_MARKERS_TOPIC, LATCHED_QOS),
            }
            self._reload_srv = self.create_service(Trigger, "~/reload_map", self._on_reload)
            path = self.get_parameter("map_file").value
            if not path:
                self.get_logger().warning("no map_file set; set it and call ~/reload_map")
            else:
                ok, msg = self.load(path)
                if not ok:
                    raise ScmprError(msg)
                self.get_logger().info(msg)
        except Exception as exc:  # noqa: BLE001 - any failure leaves the node unconfigured, with the reason
            return transition_failed(self, "configure", exc, self._release)
        self.transition_error = ""
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = super().on_activate(state)  # enables the lifecycle publishers
        with self._lock:
            if self.map_data is not None and self.announcement is not None:
                self._publish(self.map_data, self.announcement)
        self.get_logger().info("active: map " + (f"v{self.version} published" if self.announcement else "not set"))
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().info("inactive: map updates are not published")
        return super().on_deactivate(state)

    def _release(self) -> None:
        with self._lock:
            if self._reload_srv is not None:
                self.destroy_service(self._reload_srv)
                self._reload_srv = None
            for publisher in self._pubs.values():
                self.destroy_lifecycle_publisher(publisher)
            self._pubs = {}
            self.map_data = self.announcement = None

    # --------------------------------------------------------------------------------- loading
    def load(self, path: str) -> tuple[bool, str]:
        """Validate ``path`` and make it the active map (published while the node is active); on failure
        keep the current one."""
        with self._lock:
            frame = str(self.get_parameter("frame_id").value)
            t0 = time.perf_counter()
            try:
                data, ann = load_and_validate(path, frame, self.version + 1)
            except (ScmprError, OSError, ValueError) as exc:
                self.last_error = str(exc)
                keep = (
                    f"; keeping map v{self.version} {self.announcement.path}"
                    if self.announcement
                    else "; no map active"
                )
                return False, f"map load failed: {exc}{keep}"
            self.version = ann.version
            self.map_data, self.announcement, self.last_error = data, ann, ""
            if self._pubs:
                self._publish(data, ann)
            return True, (
                f"map v{ann.version} {ann.path}: {ann.num_viewpoints} viewpoints, dim {ann.descriptor_dim}, "
                f"{ann.size_bytes / 1e6:.1f} MB, loaded in {time.perf_counter() - t0:.2f} s"
            )

    def _publish(self, data, ann: MapAnnouncement) -> None:
        self._pubs["ann"].publish(String(data=ann.to_json()))
        poses = np.asarray(data.poses, dtype=np.float64)
        limit = max(1, int(self.get_parameter("max_published_poses").value))
        stride = max(1, int(np.ceil(len(poses) / limit)))
        sel = poses[::stride]
        stamp = self.get_clock().now().to_msg()
        pa = PoseArray()
        pa.header.stamp, pa.header.frame_id = stamp, ann.frame_id
        pa.poses = [pose_msg(p) for p in sel]
        self._pubs["poses"].publish(pa)
        mk = Marker()
        mk.header.stamp, mk.header.frame_id = stamp, ann.frame_id
        mk.ns, mk.id, mk.type, mk.action = "scmpr_viewpoints", 0, Marker.SPHERE_LIST, Marker.ADD
        mk.pose.orientation.w = 1.0
        mk.scale.x = mk.scale.y = mk.scale.z = 0.6
        mk.color.r, mk.color.g, mk.color.b, mk.color.a = 0.1, 0.6, 1.0, 0.8
        pts = []
        for p in sel:
            pt = Pose().position
            pt.x, pt.y, pt.z = float(p[0]), float(p[1]), float(p[2])
            pts.append(pt)
        mk.points = pts
        self._pubs["markers"].publish(MarkerArray(markers=[mk]))

    def _on_reload(self, request, response):
        ok, msg = self.load(str(self.get_parameter("map_file").value))
        self._log_result(ok, msg)
        response.success, response.message = ok, msg
        return response

    def _log_result(self, ok: bool, msg: str) -> None:
        # rclpy forbids one call site logging at two severities, hence two calls.
        if ok:
            self.get_logger().info(msg)
        else:
            self.get_logger().error(msg)


def main(args: list[str] | None = None) -> int:
    from scmpr_ros.nodes.executors import run_node_main

    return run_node_main("map_server", MapServer, args)


if __name__ == "__main__":
    sys.exit(main())
