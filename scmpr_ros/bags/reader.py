"""Read rosbag2 directories (sqlite3 or mcap) with rosbags — no ROS install, no rclpy.

Messages come back either raw (CDR bytes, what bag_player publishes unchanged) or deserialized
with rosbags' ROS 2 Kilted type store extended by the definitions stored in the bag.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scmpr_ros.errors import ScmprError
from scmpr_ros.msgs.topics import GROUND_TRUTH_TOPIC


class BagError(ScmprError):
    """A rosbag2 directory that is missing, unreadable or lacks what was asked for."""


@dataclass(frozen=True)
class TopicSummary:
    msgtype: str
    count: int


@dataclass(frozen=True)
class BagInfo:
    path: Path
    storage: str  # sqlite3 | mcap
    topics: dict[str, TopicSummary] = field(default_factory=dict)
    start_ns: int = 0  # log time of the first message
    end_ns: int = 0  # log time of the last message
    message_count: int = 0

    @property
    def duration_s(self) -> float:
        return max(0, self.end_ns - self.start_ns) / 1e9


def _typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_KILTED)


def _open(path: str | Path):
    from rosbags.rosbag2 import Reader

    path = Path(path)
    if not (path / "metadata.yaml").is_file():
        raise BagError(f"{path}: not a rosbag2 directory (no metadata.yaml); give the directory kitti-to-bag wrote")
    try:
        reader = Reader(path)
        reader.open()
    except Exception as exc:  # noqa: BLE001 - rosbags raises several types
        raise BagError(f"{path}: cannot open the bag: {exc}") from exc
    return reader


def bag_info(path: str | Path) -> BagInfo:
    """Topics, types, message counts and time range of a bag."""
    reader = _open(path)
    try:
        topics: dict[str, TopicSummary] = {}
        for conn in reader.connections:
            prev = topics.get(conn.topic)
            topics[conn.topic] = TopicSummary(conn.msgtype, conn.msgcount + (prev.count if prev else 0))
        storage = "mcap" if any(Path(path).glob("*.mcap")) else "sqlite3"
        count = int(reader.message_count)
        # rosbags' end_time is 1 ns after the last message; BagInfo holds the last message's time
        return BagInfo(
            Path(path),
            storage,
            topics,
            int(reader.start_time) if count else 0,
            int(reader.end_time) - 1 if count else 0,
            count,
        )
    finally:
        reader.close()


def iter_raw(path: str | Path, topics: Iterable[str] | None = None) -> Iterator[tuple[str, str, int, bytes]]:
    """(topic, msgtype, log time ns, CDR bytes) in log-time order."""
    reader = _open(path)
    try:
        wanted = set(topics) if topics is not None else None
        if wanted is not None:
            present = {c.topic for c in reader.connections}
            missing = sorted(wanted - present)
            if missing:
                raise BagError(f"{path}: topics {missing} are not in the bag (it has {sorted(present)})")
        conns = [c for c in reader.connections if wanted is None or c.topic in wanted]
        for conn, t_ns, raw in reader.messages(connections=conns):
            yield conn.topic, conn.msgtype, int(t_ns), bytes(raw)
    finally:
        reader.close()


def iter_messages(path: str | Path, topics: Iterable[str] | None = None) -> Iterator[tuple[str, int, Any]]:
    """(topic, log time ns, rosbags message dataclass) in log-time order."""
    from rosbags.typesys import get_types_from_msg

    store = _typestore()
    reader = _open(path)
    try:
        extra: dict = {}
        for conn in reader.connections:
            if conn.msgtype not in store.types and conn.msgdef.data:
                try:
                    extra.update(get_types_from_msg(conn.msgdef.data, conn.msgtype))
                except Exception:  # noqa: BLE001 - unknown definition format: fail at use below
                    pass
        if extra:
            store.register(extra)
    finally:
        reader.close()
    for topic, msgtype, t_ns, raw in iter_raw(path, topics):
        if msgtype not in store.types:
            raise BagError(f"{path}: no definition for message type {msgtype} on {topic}")
        yield topic, t_ns, store.deserialize_cdr(raw, msgtype)


def ground_truth_positions(path: str | Path, topic: str = GROUND_TRUTH_TOPIC) -> dict[int, tuple[float, float, float]]:
    """Header stamp (ns) -> (x, y, z) of the bag's ground-truth odometry; empty when the bag has none."""
    if topic not in bag_info(path).topics:
        return {}
    positions = {}
    for _topic, _t, msg in iter_messages(path, [topic]):
        p = msg.pose.pose.position
        positions[int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)] = (p.x, p.y, p.z)
    return positions
