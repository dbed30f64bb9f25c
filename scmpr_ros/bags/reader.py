"""Read bags with rosbags — no ROS install, no rclpy.

A bag is either a rosbag2 directory (``metadata.yaml`` + sqlite3 or mcap storage files, what
``ros2 bag record`` and ``scmpr kitti-to-bag`` write) or one bare ``.mcap`` (or ``.db3``) file without
``metadata.yaml``, as Foxglove and third-party converters write them (rosbags' ``Reader`` reads such
files directly: counts and time range come from the MCAP summary, or from a scan of an unindexed file).
A directory without ``metadata.yaml`` that holds exactly one ``.mcap`` file is read as that file.

Messages come back either raw (CDR bytes, what bag_player publishes unchanged) or deserialized
with rosbags' ROS 2 Kilted type store extended by the definitions stored in the bag.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scmpr_ros.errors import ScmprError
from scmpr_ros.msgs.topics import GROUND_TRUTH_TOPIC


class BagError(ScmprError):
    """A bag (rosbag2 directory or .mcap file) that is missing, unreadable or lacks what was asked for."""


#: what every "this is not a bag" message tells the user to give instead
EXPECTED = "a rosbag2 directory (with metadata.yaml) or a single .mcap file"
MCAP_MAGIC = b"\x89MCAP0\r\n"
SQLITE_MAGIC = b"SQLite format 3\x00"
_FILE_STORAGE = {".mcap": "mcap", ".db3": "sqlite3"}


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
    layout: str = "rosbag2"  # rosbag2 (directory with metadata.yaml) | file (a bare .mcap / .db3)

    @property
    def duration_s(self) -> float:
        return max(0, self.end_ns - self.start_ns) / 1e9


@dataclass(frozen=True)
class _Source:
    """What rosbags opens for a user's bag path: the directory itself or one storage file."""

    given: Path  # the path as the user gave it (used in messages)
    open_path: Path  # what rosbags.rosbag2.Reader gets
    storage: str  # sqlite3 | mcap
    layout: str  # rosbag2 | file


def _typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_KILTED)


def _interrupted_overwrite_hint(path: Path) -> str:
    """A sentence for a missing bag that an interrupted ``kitti-to-bag --overwrite`` moved aside."""
    try:
        aside = sorted(path.parent.glob(f".{path.name}.old-*"))
    except OSError:
        return ""
    if not aside:
        return ""
    return (
        f"; an interrupted `scmpr kitti-to-bag --overwrite` left the previous bag in {aside[-1]}: run kitti-to-bag "
        "again with the same --out to restore it, or rename it back"
    )


def _file_source(given: Path, f: Path) -> _Source:
    storage = _FILE_STORAGE.get(f.suffix.lower())
    if storage is None:
        raise BagError(f"{given}: not a rosbag2 directory nor a .mcap file (a '{f.suffix}' file); give {EXPECTED}")
    try:
        with open(f, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise BagError(f"{given}: cannot read the bag file: {exc}") from exc
    magic = MCAP_MAGIC if storage == "mcap" else SQLITE_MAGIC
    if not head.startswith(magic):
        kind = "an MCAP file" if storage == "mcap" else "an SQLite database"
        what = "is empty" if not head else f"starts with {head[:8]!r}"
        raise BagError(f"{given}: named {f.suffix} but not {kind} (it {what}); give {EXPECTED}")
    return _Source(given, f, storage, "file")


def _source(path: str | Path) -> _Source:
    """Resolve a user's bag path, or raise BagError saying what was expected."""
    path = Path(path)
    if not path.exists():
        raise BagError(
            f"{path}: does not exist, so it is not a rosbag2 directory nor a .mcap file; give {EXPECTED}"
            + _interrupted_overwrite_hint(path)
        )
    if path.is_file():
        if path.name == "metadata.yaml":  # the metadata file of a rosbag2 directory: read the directory
            return _source(path.parent)
        return _file_source(path, path)
    meta = path / "metadata.yaml"
    if meta.is_file():
        storage = "sqlite3"
        try:
            import yaml

            doc = yaml.safe_load(meta.read_text(encoding="utf-8")) or {}
            storage = str(doc["rosbag2_bagfile_information"]["storage_identifier"])
        except Exception:  # noqa: BLE001 - rosbags reports a broken metadata.yaml when it opens the bag
            storage = "mcap" if any(path.glob("*.mcap")) else "sqlite3"
        return _Source(path, path, storage, "rosbag2")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in _FILE_STORAGE)
    if len(files) == 1:  # a folder holding one exported .mcap (or a rosbag2 directory that lost its metadata)
        return _file_source(path, files[0])
    if files:
        raise BagError(
            f"{path}: not a rosbag2 directory (no metadata.yaml) and it holds {len(files)} storage files "
            f"({', '.join(p.name for p in files)}); give one of them, or {EXPECTED}"
        )
    raise BagError(f"{path}: not a rosbag2 directory (no metadata.yaml) and no .mcap file in it; give {EXPECTED}")


def _open(path: str | Path):
    from rosbags.rosbag2 import Reader

    src = _source(path)
    try:
        reader = Reader(src.open_path)
        reader.open()
    except Exception as exc:  # noqa: BLE001 - rosbags raises several types
        raise BagError(f"{src.given}: cannot open the bag ({src.storage}, {src.layout}): {exc}") from exc
    return src, reader


def _check_cdr(src: _Source, conns) -> None:
    """Only CDR payloads can be replayed or deserialized; say which topics are in another encoding."""
    other = sorted(
        {(c.topic, str(getattr(c.ext, "serialization_format", "cdr"))) for c in conns}
        - {(c.topic, "cdr") for c in conns}
    )
    if other:
        listed = ", ".join(f"{t} ({fmt})" for t, fmt in other)
        raise BagError(
            f"{src.given}: topics {listed} are not CDR-encoded ROS 2 messages; only CDR can be read: "
            "record them as ROS 2 messages, or leave those topics out"
        )


def bag_info(path: str | Path) -> BagInfo:
    """Topics, types, message counts and time range of a bag."""
    src, reader = _open(path)
    try:
        topics: dict[str, TopicSummary] = {}
        for conn in reader.connections:
            prev = topics.get(conn.topic)
            topics[conn.topic] = TopicSummary(conn.msgtype, conn.msgcount + (prev.count if prev else 0))
        count = int(reader.message_count)
        # rosbags' end_time is 1 ns after the last message; BagInfo holds the last message's time
        return BagInfo(
            src.given,
            src.storage,
            topics,
            int(reader.start_time) if count else 0,
            int(reader.end_time) - 1 if count else 0,
            count,
            src.layout,
        )
    finally:
        reader.close()


def iter_raw(path: str | Path, topics: Iterable[str] | None = None) -> Iterator[tuple[str, str, int, bytes]]:
    """(topic, msgtype, log time ns, CDR bytes) in log-time order."""
    from rosbags.rosbag2 import ReaderError

    src, reader = _open(path)
    try:
        wanted = set(topics) if topics is not None else None
        if wanted is not None:
            present = {c.topic for c in reader.connections}
            missing = sorted(wanted - present)
            if missing:
                raise BagError(f"{path}: topics {missing} are not in the bag (it has {sorted(present)})")
        conns = [c for c in reader.connections if wanted is None or c.topic in wanted]
        if not conns:  # rosbags reads every connection when given none
            return
        _check_cdr(src, conns)
        try:
            for conn, t_ns, raw in reader.messages(connections=conns):
                yield conn.topic, conn.msgtype, int(t_ns), bytes(raw)
        except ReaderError as exc:
            raise BagError(
                f"{src.given}: cannot read the messages ({exc}); if another tool wrote this .mcap without an "
                "index and out of time order, re-write it with an index (e.g. `ros2 bag convert`)"
            ) from exc
    finally:
        reader.close()


def iter_messages(path: str | Path, topics: Iterable[str] | None = None) -> Iterator[tuple[str, int, Any]]:
    """(topic, log time ns, rosbags message dataclass) in log-time order."""
    from rosbags.typesys import get_types_from_msg

    store = _typestore()
    src, reader = _open(path)
    try:
        extra: dict = {}
        for conn in reader.connections:
            if conn.msgtype not in store.types and conn.msgdef.data:
                # an unknown definition format: the type stays unknown and its use fails below
                with contextlib.suppress(Exception):
                    extra.update(get_types_from_msg(conn.msgdef.data, conn.msgtype))
        if extra:
            store.register(extra)
    finally:
        reader.close()
    for topic, msgtype, t_ns, raw in iter_raw(path, topics):
        if msgtype not in store.types:
            raise BagError(f"{src.given}: no definition for message type {msgtype} on {topic}")
        try:
            msg = store.deserialize_cdr(raw, msgtype)
        except Exception as exc:  # noqa: BLE001 - a payload that does not match its type
            raise BagError(
                f"{src.given}: a {msgtype} message on {topic} at {t_ns} ns cannot be decoded ({exc}); "
                "the bag's message definition differs from ROS 2 Kilted's"
            ) from exc
        yield topic, t_ns, msg


def ground_truth_positions(path: str | Path, topic: str = GROUND_TRUTH_TOPIC) -> dict[int, tuple[float, float, float]]:
    """Header stamp (ns) -> (x, y, z) of the bag's ground-truth odometry; empty when the bag has none."""
    if topic not in bag_info(path).topics:
        return {}
    positions = {}
    for _topic, _t, msg in iter_messages(path, [topic]):
        p = msg.pose.pose.position
        positions[int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)] = (p.x, p.y, p.z)
    return positions
