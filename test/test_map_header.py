"""Every header field of a .scmpr-map is checked when it is read (issue [J]), and temporary files of
killed writers are cleaned up on the next write.

Each crafted file is re-sealed with a correct checksum (like test_map_file's _rewrite_with_checksum),
so only the header validation can catch the edit.  A refused file is left byte for byte as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from test_map_file import make_map

from scmpr_ros.errors import MapFileError
from scmpr_ros.io_utils import atomic_write, remove_stale_temp_files, stale_temp_files
from scmpr_ros.mapping.map_file import PREAMBLE, PREAMBLE_SIZE, read_header, read_map, write_map

REBUILD = "rebuild the map with `scmpr build-map`"


def _dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True).stdout)


def rewrite_header(path: Path, edit) -> None:
    """Apply ``edit(header)`` and write the file back with its arrays, sizes and checksum consistent."""
    header, data_start = read_header(path)
    data = path.read_bytes()[data_start:]
    edit(header)
    hbytes = json.dumps(header, sort_keys=True).encode()  # NaN allowed here, on purpose
    hbytes += b" " * ((-(PREAMBLE_SIZE + len(hbytes))) % 64)
    digest = hashlib.sha256(hbytes + data).digest()
    pre = PREAMBLE.pack(b"SCMPRMAP", 1, 0, len(hbytes), PREAMBLE_SIZE + len(hbytes) + len(data), digest)
    path.write_bytes(pre + b"\0" * (PREAMBLE_SIZE - len(pre)) + hbytes + data)


def _set(*keys, value):
    def edit(h):
        d = h
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value

    return edit


def _delete(*keys):
    def edit(h):
        d = h
        for k in keys[:-1]:
            d = d[k]
        del d[keys[-1]]

    return edit


CASES = [
    # the probe's find: camera null crashed `scmpr map-info` and was accepted by map_server and the localizer
    ("camera-null", _set("camera", value=None), "'camera' is null, expected an object with width, height, fx, fy"),
    ("camera-list", _set("camera", value=[1, 2]), "'camera' is a list, expected an object"),
    ("camera-no-K", _delete("camera", "fx"), "'camera' lacks fx (it needs width, height, fx, fy, cx, cy, T_cam_velo)"),
    ("camera-no-T", _delete("camera", "T_cam_velo"), "'camera' lacks T_cam_velo"),
    ("camera-size-str", _set("camera", "width", value="1241"), "'camera.width' is '1241', expected an image size"),
    ("camera-size-0", _set("camera", "height", value=0), "'camera.height' is 0, expected an image size"),
    ("camera-fx-nan", _set("camera", "fx", value=float("nan")), "'camera.fx' is nan, expected a focal length"),
    ("camera-cx-null", _set("camera", "cx", value=None), "'camera.cx' is None, expected a principal point"),
    ("T-3x4", _set("camera", "T_cam_velo", value=np.eye(4)[:3].tolist()), "'camera.T_cam_velo' is [[1.0"),
    ("T-str", _set("camera", "T_cam_velo", value="eye"), "'camera.T_cam_velo' is 'eye', expected a 4x4 list"),
    ("T-scaled", _set("camera", "T_cam_velo", value=(np.eye(4) * 2).tolist()), "is not a rigid transform"),
    ("model_config-null", _set("model_config", value=None), "'model_config' is null, expected an object"),
    ("model_config-str", _set("model_config", value="nano"), "'model_config' is a string, expected an object"),
    ("metadata-list", _set("metadata", value=[]), "'metadata' is a list, expected an object"),
    ("metadata-sequence", _set("metadata", "sequence", value=5), "'metadata.sequence' is an integer (5), expected str"),
    ("metadata-dataset", _set("metadata", "dataset", value=None), "'metadata.dataset' is null (None), expected str"),
    ("no-grid", _delete("grid"), "required field(s) grid missing"),
    ("no-metadata", _delete("metadata"), "required field(s) metadata missing"),
    ("grid-null", _set("grid", value=None), "'grid' is null, expected an object"),
    ("grid-rows", _set("grid", "rows", value="4"), "'grid.rows' is '4', expected an integer >= 1"),
    ("grid-classes", _set("grid", "num_classes", value=3), "'grid.num_classes' is 3, expected"),
    ("grid-fraction", _set("grid", "min_fraction", value=2), "'grid.min_fraction' is 2, expected a number in [0, 1]"),
    ("grid-names", _set("grid", "class_names", value=["a"]), "the map's classes ['a'] differ from this package's"),
    ("frame_id", _set("frame_id", value=""), "'frame_id' is '', expected a non-empty string"),
    ("checksum", _set("model_checksum", value=0), "'model_checksum' is 0, expected the non-empty sha256"),
    ("version", _set("version", value="1"), "'version' is '1', expected 1"),
    ("n-negative", _set("num_viewpoints", value=-1), "'num_viewpoints' is -1, expected an integer >= 0"),
    (
        "n-wrong",
        _set("num_viewpoints", value=301),
        "descriptors has shape [300, 64] but the header describes [301, 64]",
    ),
    ("dim-float", _set("descriptor_dim", value=64.0), "'descriptor_dim' is 64.0, expected an integer >= 1"),
    ("dtype", _set("descriptor_dtype", value="float64"), "'descriptor_dtype' is 'float64', expected one of"),
    ("dtype-vs-array", _set("descriptor_dtype", value="float32"), "but arrays.descriptors is '<f2'"),
    ("arrays-null", _set("arrays", value=None), "'arrays' is null, expected an object"),
    ("array-missing", _delete("arrays", "prototypes"), "arrays missing from the map: prototypes"),
    ("array-dtype", _set("arrays", "poses", "dtype", value="<f4"), "'arrays.poses.dtype' is '<f4', expected '<f8'"),
    ("array-shape", _set("arrays", "poses", "shape", value=[300]), "'arrays.poses.shape' is [300], expected 2"),
    ("array-nbytes", _set("arrays", "poses", "nbytes", value=8), "'arrays.poses.nbytes' is 8, but [300, 7] x 8"),
    ("array-offset", _set("arrays", "prototypes", "offset", value=3), "'arrays.prototypes.offset' is 3, expected a"),
    (
        "array-past-end",
        _set("arrays", "prototypes", "offset", value=1 << 30),
        "<f4 does not fit the file (ends at byte",
    ),
    ("array-protos", _set("arrays", "prototypes", "shape", value=[3, 32]), "prototypes has shape [3, 32] but the"),
    ("header-list", lambda h: (h.clear(), h.update(format="scmpr-map")), "required field(s) version, num_viewpoints"),
]


@pytest.fixture()
def good_map(tmp_path):
    p = tmp_path / "m.scmpr-map"
    write_map(p, make_map())
    return p


@pytest.mark.parametrize("edit, needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_every_header_field_is_checked_when_read(good_map, edit, needle):
    rewrite_header(good_map, edit)
    before = good_map.read_bytes()
    for read in (read_map, lambda p: read_map(p, verify_checksum=False, mmap_arrays=False), read_header):
        with pytest.raises(MapFileError) as err:
            read(good_map)
        text = str(err.value)
        assert text.startswith(str(good_map)) and needle in text, text
        assert "rebuild the map" in text
    assert good_map.read_bytes() == before


def test_overlapping_arrays_are_refused(good_map):
    def edit(h):
        h["arrays"]["source_frames"]["offset"] = h["arrays"]["viewpoint_ids"]["offset"]

    rewrite_header(good_map, edit)
    with pytest.raises(MapFileError, match=r"'arrays\.(source_frames|viewpoint_ids)\.offset' overlaps arrays\."):
        read_map(good_map)


def test_map_info_reports_a_null_camera_without_a_traceback(good_map, capsys):
    from scmpr_ros.cli import main

    rewrite_header(good_map, _set("camera", value=None))
    rc = main(["map-info", str(good_map)])
    captured = capsys.readouterr()
    assert rc == 2, captured
    assert "'camera' is null" in captured.err and REBUILD in captured.err
    assert "Traceback" not in captured.err + captured.out


def test_the_untouched_map_still_reads_and_rewrites(good_map):
    rewrite_header(good_map, lambda h: None)  # re-sealing alone changes nothing that matters
    m = read_map(good_map)
    assert m.num_viewpoints == 300 and m.camera["width"] == 1241 and m.frame_id == "map"


def test_write_map_refuses_a_header_it_could_not_read_back(tmp_path):
    for field, value, needle in (
        ("camera", None, "'camera' is null"),
        ("model_config", None, "'model_config' is null"),
        ("frame_id", "", "'frame_id' is ''"),
    ):
        m = make_map()
        setattr(m, field, value)
        out = tmp_path / "w.scmpr-map"
        with pytest.raises(MapFileError, match="not written") as err:
            write_map(out, m)
        assert needle in str(err.value) and "fix the MapData given to write_map" in str(err.value)
        assert not out.exists() and list(tmp_path.iterdir()) == []


# -- temporary files left by killed writers --------------------------------------------------------
_KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from scmpr_ros.io_utils import atomic_write

    with atomic_write(sys.argv[1], "wb") as fh:
        fh.write(b"half a map")
        fh.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_a_killed_writer_leaves_its_temp_file_and_the_next_write_removes_it(tmp_path):
    target = tmp_path / "x.scmpr-map"
    write_map(target, make_map(seed=1))
    before = target.read_bytes()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(target)], env=env, capture_output=True)
    assert child.returncode == -signal.SIGKILL, child.stderr
    (leftover,) = [p for p in tmp_path.iterdir() if p.name != target.name]
    assert leftover.name.startswith(".x.scmpr-map.pid") and leftover.name.endswith(".tmp")
    assert target.read_bytes() == before, "the target is untouched by the killed write"
    assert stale_temp_files(target) == [leftover]

    # others' files stay: a live writer's (this process), a fresh legacy one, other targets, look-alikes
    live = tmp_path / f".x.scmpr-map.pid{os.getpid()}.abcd1234.tmp"
    fresh_legacy = tmp_path / ".x.scmpr-map.k3j2h1g0.tmp"
    other_target = tmp_path / f".y.scmpr-map.pid{_dead_pid()}.abcd1234.tmp"
    lookalike = tmp_path / f".x.scmpr-map.pid{_dead_pid()}.notes.tmp"
    old_legacy = tmp_path / ".x.scmpr-map.zz99yy88.tmp"
    for p in (live, fresh_legacy, other_target, lookalike, old_legacy):
        p.write_bytes(b"x")
    day_ago = time.time() - 2 * 24 * 3600
    os.utime(old_legacy, (day_ago, day_ago))

    write_map(target, make_map(seed=2))  # a map write cleans its own target's leftovers first
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(p.name for p in (target, live, fresh_legacy, other_target, lookalike))
    assert read_map(target).num_viewpoints == 300
    # the general helper, used by build_map before it starts
    assert remove_stale_temp_files(tmp_path / "y.scmpr-map") == [other_target]
    # plain atomic writes (datasets written file by file) do not scan the folder
    with atomic_write(tmp_path / "x.scmpr-map.txt", "w") as fh:
        fh.write("ok")
    assert live.exists() and fresh_legacy.exists()


def test_build_map_removes_the_temp_file_of_a_killed_build(scene_kitti_dir, small_model_file, tmp_path):
    from scmpr_ros.cli import main

    out = tmp_path / "street.scmpr-map"
    stale = tmp_path / f".street.scmpr-map.pid{_dead_pid()}.q1w2e3r4.tmp"
    stale.write_bytes(b"\0" * 4096)  # what a build killed during its write leaves
    cfg = tmp_path / "map.yaml"
    cfg.write_text("map:\n  place_spacing_m: 8.0\n  yaw_offsets_deg: [0.0]\n  lateral_offsets_m: [0.0]\n")
    args = ["build-map", str(scene_kitti_dir), "--sequence", "00", "--model", str(small_model_file)]
    assert main([*args, "--out", str(out), "--config", str(cfg), "--threads", "2"]) == 0
    assert not stale.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["map.yaml", "street.scmpr-map"]
    m = read_map(out)
    assert m.metadata["dataset_kind"] == "kitti" and "town" not in m.metadata  # not a synthetic town


def test_preamble_is_unchanged_by_the_header_checks(good_map):
    # read_header still returns what the preamble says: header length and data start
    header, start = read_header(good_map)
    hlen = struct.unpack_from("<Q", good_map.read_bytes(), 16)[0]
    assert start == PREAMBLE_SIZE + hlen and header["format"] == "scmpr-map"
