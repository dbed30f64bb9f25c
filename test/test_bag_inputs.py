"""Bags from other tools and bad bag paths (issue [J]).

* a bare ``.mcap`` file without metadata.yaml (what Foxglove and third-party converters write) reads
  back exactly like the rosbag2 directory it came from: bag_info, iter_raw, iter_messages,
  ground_truth_positions; so does an unindexed, summary-less MCAP written record by record;
* paths that are not bags say what was expected, and leave the file as it was;
* ``kitti-to-bag --overwrite`` killed between its two renames (a real SIGKILL in a child process)
  leaves its previous bag in ``.OUT.old-PID``: the next run restores it and removes ``.OUT.tmp-PID``.
No rclpy needed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from test_bags import kitti_root  # noqa: F401 - the tiny KITTI-layout sequence fixture

from scmpr_ros.bags import kitti_to_bag as k2b
from scmpr_ros.bags.reader import BagError, bag_info, ground_truth_positions, iter_messages, iter_raw
from scmpr_ros.msgs.conversions import image_fields, image_to_rgb
from scmpr_ros.msgs.topics import GROUND_TRUTH_TOPIC, IMAGE_TOPIC

T0 = 1_700_000_000_000_000_000
PERIOD = 100_000_000
N = 5
THING = "third_party_msgs/msg/Thing"  # a type ROS 2 Kilted does not know: its definition is in the file
THING_DEF = "float64 x\nstring name\n"


def _typestore():
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    ts = get_typestore(Stores.ROS2_KILTED)
    ts.register(get_types_from_msg(THING_DEF, THING))
    return ts


def _messages(ts):
    """(topic, msgtype, log time, message) of a short drive: images, ground truth, a third-party type."""
    T = ts.types
    out = []
    for i in range(N):
        t = T0 + i * PERIOD
        stamp = T["builtin_interfaces/msg/Time"](sec=t // 10**9, nanosec=t % 10**9)
        img = np.full((16, 32, 3), 10 * i, np.uint8)
        out.append(
            (
                IMAGE_TOPIC,
                "sensor_msgs/msg/Image",
                t,
                T["sensor_msgs/msg/Image"](
                    header=T["std_msgs/msg/Header"](stamp=stamp, frame_id="camera"), **image_fields(img)
                ),
            )
        )
        pose = T["geometry_msgs/msg/Pose"](
            position=T["geometry_msgs/msg/Point"](x=2.0 * i, y=-1.0, z=0.5),
            orientation=T["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0),
        )
        zero = T["geometry_msgs/msg/Vector3"](x=0.0, y=0.0, z=0.0)
        out.append(
            (
                GROUND_TRUTH_TOPIC,
                "nav_msgs/msg/Odometry",
                t,
                T["nav_msgs/msg/Odometry"](
                    header=T["std_msgs/msg/Header"](stamp=stamp, frame_id="map"),
                    child_frame_id="velodyne",
                    pose=T["geometry_msgs/msg/PoseWithCovariance"](pose=pose, covariance=np.zeros(36)),
                    twist=T["geometry_msgs/msg/TwistWithCovariance"](
                        twist=T["geometry_msgs/msg/Twist"](linear=zero, angular=zero), covariance=np.zeros(36)
                    ),
                ),
            )
        )
        out.append(("/thing", THING, t + 1, T[THING](x=0.25 * i, name=f"thing {i}")))
    return out


def _write_rosbag2_mcap(path: Path) -> Path:
    from rosbags.rosbag2 import StoragePlugin, Writer

    ts = _typestore()
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        conns = {}
        for topic, msgtype, t, msg in _messages(ts):
            if topic not in conns:
                conns[topic] = w.add_connection(topic, msgtype, typestore=ts)
            w.write(conns[topic], t, ts.serialize_cdr(msg, msgtype))
    return path


# -- a minimal streaming MCAP writer, as a third-party tool writes one: records in order, no chunks,
# -- no index, no summary, no metadata.yaml (https://mcap.dev/spec)
MAGIC = b"\x89MCAP0\r\n"


def _s(text: str) -> bytes:
    b = text.encode()
    return struct.pack("<I", len(b)) + b


def _record(op: int, body: bytes) -> bytes:
    return struct.pack("<BQ", op, len(body)) + body


def write_streaming_mcap(path: Path, entries, encoding: str = "cdr", reverse_time: bool = False) -> Path:
    """entries: (topic, msgtype, log time, payload bytes); one schema + channel per topic."""
    ts = _typestore()
    out = bytearray(MAGIC)
    out += _record(0x01, _s("ros2") + _s("some-third-party-converter 0.1"))
    channels: dict[str, int] = {}
    if reverse_time:
        entries = entries[::-1]
    for seq, (topic, msgtype, t, payload) in enumerate(entries):
        if topic not in channels:
            cid = len(channels) + 1
            channels[topic] = cid
            msgdef, _ = ts.generate_msgdef(msgtype, ros_version=2)
            out += _record(0x03, struct.pack("<H", cid) + _s(msgtype) + _s("ros2msg") + _s(msgdef))
            meta = b""  # empty map<string, string>
            out += _record(
                0x04, struct.pack("<HH", cid, cid) + _s(topic) + _s(encoding) + struct.pack("<I", len(meta)) + meta
            )
        out += _record(0x05, struct.pack("<HIQQ", channels[topic], seq, t, t) + payload)
    out += _record(0x0F, struct.pack("<I", 0))  # DataEnd, no CRC
    out += _record(0x02, struct.pack("<QQI", 0, 0, 0))  # Footer: no summary section
    out += MAGIC
    path.write_bytes(bytes(out))
    return path


def _serialized(ts):
    return [(topic, msgtype, t, bytes(ts.serialize_cdr(msg, msgtype))) for topic, msgtype, t, msg in _messages(ts)]


def _everything(path):
    """All a consumer can read from a bag, for comparing two bags."""
    info = bag_info(path)
    raw = list(iter_raw(path))
    decoded = [(topic, t, msg) for topic, t, msg in iter_messages(path)]
    return info, raw, decoded, ground_truth_positions(path)


def _check_drive(info, raw, decoded, gt):
    assert info.message_count == 3 * N
    assert {t: (s.msgtype, s.count) for t, s in info.topics.items()} == {
        IMAGE_TOPIC: ("sensor_msgs/msg/Image", N),
        GROUND_TRUTH_TOPIC: ("nav_msgs/msg/Odometry", N),
        "/thing": (THING, N),
    }
    assert (info.start_ns, info.end_ns) == (T0, T0 + (N - 1) * PERIOD + 1)
    assert [t for _, _, t, _ in raw] == sorted(t for _, _, t, _ in raw)
    images = [m for topic, _, m in decoded if topic == IMAGE_TOPIC]
    assert [int(image_to_rgb(m)[0, 0, 0]) for m in images] == [10 * i for i in range(N)]
    things = [m for topic, _, m in decoded if topic == "/thing"]
    assert [(m.x, m.name) for m in things] == [(0.25 * i, f"thing {i}") for i in range(N)]
    assert gt == {T0 + i * PERIOD: (2.0 * i, -1.0, 0.5) for i in range(N)}


def test_bare_mcap_taken_out_of_a_rosbag2_directory_reads_like_the_directory(tmp_path):
    bag_dir = _write_rosbag2_mcap(tmp_path / "drive")
    from_dir = _everything(bag_dir)
    _check_drive(*from_dir)
    assert from_dir[0].layout == "rosbag2" and from_dir[0].storage == "mcap"

    (mcap,) = bag_dir.glob("*.mcap")
    bare = tmp_path / "exported" / "drive.mcap"
    bare.parent.mkdir()
    shutil.move(mcap, bare)
    shutil.rmtree(bag_dir)  # no metadata.yaml anywhere now
    before = hashlib.sha256(bare.read_bytes()).hexdigest()
    from_file = _everything(bare)
    _check_drive(*from_file)
    info = from_file[0]
    assert info.path == bare and info.layout == "file" and info.storage == "mcap"
    # nothing lost or changed: the same topics, counts, times, bytes and decoded messages
    assert (info.topics, info.start_ns, info.end_ns, info.message_count) == (
        from_dir[0].topics,
        from_dir[0].start_ns,
        from_dir[0].end_ns,
        from_dir[0].message_count,
    )
    assert from_file[1] == from_dir[1] and from_file[3] == from_dir[3]
    assert hashlib.sha256(bare.read_bytes()).hexdigest() == before  # reading never writes
    # a folder holding just that one exported file is read as the file
    assert bag_info(bare.parent).message_count == 3 * N and list(iter_raw(bare.parent)) == from_dir[1]
    # selecting topics works on the bare file too
    assert [t for t, *_ in iter_raw(bare, [GROUND_TRUTH_TOPIC])] == [GROUND_TRUTH_TOPIC] * N
    with pytest.raises(BagError, match=r"topics \['/nope'\] are not in the bag"):
        list(iter_raw(bare, ["/nope"]))


def test_unindexed_streaming_mcap_of_another_tool_reads_back(tmp_path):
    ts = _typestore()
    f = write_streaming_mcap(tmp_path / "stream.mcap", _serialized(ts))
    _check_drive(*_everything(f))
    # the message definitions come from the file's schemas: a fresh Kilted type store decodes the third-party type
    assert [m.name for topic, _, m in iter_messages(f, ["/thing"])] == [f"thing {i}" for i in range(N)]


def test_unreadable_mcap_contents_say_what_to_do(tmp_path):
    ts = _typestore()
    msgs = _serialized(ts)
    f = write_streaming_mcap(tmp_path / "json.mcap", msgs, encoding="json")
    assert bag_info(f).message_count == 3 * N  # the summary still works
    with pytest.raises(BagError, match=rf"topics {IMAGE_TOPIC} \(json\).* are not CDR-encoded ROS 2 messages") as err:
        list(iter_raw(f))
    assert "leave those topics out" in str(err.value)
    g = write_streaming_mcap(tmp_path / "backwards.mcap", msgs, reverse_time=True)
    with pytest.raises(BagError, match=r"cannot read the messages .*re-write it with an index"):
        list(iter_raw(g))


def test_paths_that_are_not_bags_say_what_was_expected(tmp_path):
    expected = "a rosbag2 directory (with metadata.yaml) or a single .mcap file"

    def refused(path, needle):
        before = path.read_bytes() if path.is_file() else None
        for call in (bag_info, lambda p: list(iter_raw(p)), lambda p: list(iter_messages(p)), ground_truth_positions):
            with pytest.raises(BagError) as err:
                call(path)
            text = str(err.value)
            assert str(path) in text and needle in text and expected in text, text
        if before is not None:
            assert path.read_bytes() == before  # the file is left as it was

    refused(tmp_path / "missing", "does not exist, so it is not a rosbag2 directory")
    notes = tmp_path / "notes.txt"
    notes.write_text("not a bag\n")
    refused(notes, "not a rosbag2 directory nor a .mcap file (a '.txt' file)")
    fake = tmp_path / "fake.mcap"
    fake.write_text("hello, I am text\n")
    refused(fake, "named .mcap but not an MCAP file (it starts with b'hello, I'")
    empty = tmp_path / "empty.mcap"
    empty.write_bytes(b"")
    refused(empty, "named .mcap but not an MCAP file (it is empty)")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "readme.md").write_text("x")
    refused(folder, "not a rosbag2 directory (no metadata.yaml) and no .mcap file in it")
    two = tmp_path / "two"
    two.mkdir()
    ts = _typestore()
    for name in ("a.mcap", "b.mcap"):
        write_streaming_mcap(two / name, _serialized(ts))
    with pytest.raises(BagError, match=r"holds 2 storage files \(a.mcap, b.mcap\); give one of them"):
        bag_info(two)
    assert bag_info(two / "b.mcap").message_count == 3 * N
    # a truncated MCAP file: rosbags' reason is passed on
    cut = tmp_path / "cut.mcap"
    cut.write_bytes((two / "a.mcap").read_bytes()[:-20])
    with pytest.raises(BagError, match=r"cut.mcap: cannot open the bag \(mcap, file\): .*magic"):
        bag_info(cut)


# -- kitti-to-bag --overwrite killed between its renames -----------------------------------------------
_KILL_BETWEEN_RENAMES = textwrap.dedent(
    """
    import os, signal, sys
    from scmpr_ros.bags import kitti_to_bag as k2b

    k2b.exchange_paths = lambda a, b: False  # the two-rename fallback (file systems without RENAME_EXCHANGE)
    real_replace = os.replace

    def replace(src, dst):
        real_replace(src, dst)
        if ".old-" in os.fspath(dst):  # the old bag is aside, the new one not yet in: die here
            os.kill(os.getpid(), signal.SIGKILL)

    os.replace = replace
    k2b.kitti_to_bag(sys.argv[1], "00", sys.argv[2], max_frames=3, include_lidar=False, overwrite=True)
    """
)


def _image_count(bag) -> int:
    return bag_info(bag).topics[IMAGE_TOPIC].count


def test_overwrite_killed_between_the_renames_is_repaired_by_the_next_run(kitti_root, tmp_path):  # noqa: F811
    out = tmp_path / "bag"
    k2b.kitti_to_bag(kitti_root, "00", out, max_frames=2, include_lidar=False)
    assert _image_count(out) == 2
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.run(
        [sys.executable, "-c", _KILL_BETWEEN_RENAMES, str(kitti_root), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == -9, child.stderr
    # the crash state: nothing at --out, the old bag aside, the new one in the child's temporary directory
    assert not out.exists()
    (old,) = tmp_path.glob(".bag.old-*")
    (tmp,) = tmp_path.glob(".bag.tmp-*")
    pid = int(old.name.rsplit("-", 1)[1])
    assert tmp.name == f".bag.tmp-{pid}" and _image_count(old) == 2 and _image_count(tmp / "bag") == 3
    # reading the missing bag says where the previous one is and what to do
    with pytest.raises(BagError, match=r"left the previous bag in .*\.bag\.old-\d+: run kitti-to-bag again"):
        bag_info(out)
    # the next run restores the previous bag first; without --overwrite it then refuses, saying so
    with pytest.raises(BagError, match=r"already exists \(restored .*bag from \.bag\.old-\d+.*--overwrite"):
        k2b.kitti_to_bag(kitti_root, "00", out, max_frames=4, include_lidar=False)
    assert _image_count(out) == 2, "the previous bag is back, untouched"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bag"], "stale .old / .tmp directories are gone"
    # and with --overwrite the replacement goes through
    s = k2b.kitti_to_bag(kitti_root, "00", out, max_frames=4, include_lidar=False, overwrite=True)
    assert _image_count(out) == 4 and s.notes == ()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bag"]


def test_stale_leftovers_next_to_an_existing_bag_are_removed_by_an_overwrite(kitti_root, tmp_path):  # noqa: F811
    out = tmp_path / "bag"
    k2b.kitti_to_bag(kitti_root, "00", out, max_frames=2, include_lidar=False)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    shutil.copytree(out, tmp_path / f".bag.old-{dead_pid}")  # killed after its swap, before deleting the old bag
    (tmp_path / f".bag.tmp-{dead_pid}" / "bag").mkdir(parents=True)  # killed while writing
    (tmp_path / f".bag.tmp-{os.getppid()}").mkdir()  # a run in progress (alive PID): left alone
    (tmp_path / ".bag.tmp-notapid").mkdir()  # not ours: left alone
    # without --overwrite the superseded copy is kept and named in the refusal
    with pytest.raises(BagError, match=rf"already exists \(\.bag\.old-{dead_pid} holds the previous bag"):
        k2b.kitti_to_bag(kitti_root, "00", out, include_lidar=False)
    assert (tmp_path / f".bag.old-{dead_pid}").is_dir() and not (tmp_path / f".bag.tmp-{dead_pid}").exists()
    s = k2b.kitti_to_bag(kitti_root, "00", out, max_frames=3, include_lidar=False, overwrite=True)
    assert _image_count(out) == 3
    assert any(f".bag.old-{dead_pid}" in n for n in s.notes)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".bag.tmp-notapid", f".bag.tmp-{os.getppid()}", "bag"])


@pytest.mark.parametrize("atomic_exchange", [True, False])
def test_overwrite_swaps_in_the_new_bag(kitti_root, tmp_path, monkeypatch, atomic_exchange):  # noqa: F811
    if not atomic_exchange:
        monkeypatch.setattr(k2b, "exchange_paths", lambda a, b: False)
    out = tmp_path / "bag"
    k2b.kitti_to_bag(kitti_root, "00", out, max_frames=2, include_lidar=False)
    k2b.kitti_to_bag(kitti_root, "00", out, max_frames=3, include_lidar=False, overwrite=True)
    assert _image_count(out) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["bag"]
