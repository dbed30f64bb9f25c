"""The ``*.scmpr-map`` file: one self-describing, checksummed, memory-mappable file per map.

Layout (little endian): a 64-byte preamble ``b"SCMPRMAP"``, u32 format version, u32 0, u64 header
length, u64 file size, sha256 of bytes [64:]; then a UTF-8 JSON header (array table + metadata);
then the arrays, each 64-byte aligned.  Semantic grids are bit-packed per viewpoint.
Loading checks magic, version, size, checksum, every header field (``validate_header``: types, shapes,
required keys, the camera, the array table), the arrays (``validate_map``: shapes, finiteness) and model
compatibility; ``write_map`` runs the same two checks, so a file it writes always reads back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import mmap
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scmpr_ros.errors import MapFileError
from scmpr_ros.geometry import poses_to_matrices
from scmpr_ros.io_utils import atomic_write
from scmpr_ros.semantics import CLASS_NAMES, NUM_CLASSES

MAGIC = b"SCMPRMAP"
FORMAT_VERSION = 1
PREAMBLE = struct.Struct("<8sIIQQ32s")  # magic, version, reserved, header_len, file_size, sha256
PREAMBLE_SIZE = 64
ALIGN = 64
MAP_SUFFIX = ".scmpr-map"
DESCRIPTOR_DTYPES = {"float16": np.float16, "float32": np.float32}
_CHUNK_ROWS = 1 << 16


class PackedGrids:
    """Bit-packed semantic grids (N, rows, cols, N_S); indexing unpacks only the rows asked for."""

    def __init__(self, packed: np.ndarray, rows: int, cols: int, num_classes: int):
        self.packed = packed
        self.grid_shape = (int(rows), int(cols), int(num_classes))
        self._bits = rows * cols * num_classes
        if packed.ndim != 2 or packed.shape[1] != (self._bits + 7) // 8:
            raise MapFileError(
                f"packed semantic grids have shape {packed.shape}, expected (N, {(self._bits + 7) // 8}) "
                f"for a {rows}x{cols}x{num_classes} grid"
            )

    @classmethod
    def pack(cls, grids: np.ndarray) -> PackedGrids:
        g = np.asarray(grids, dtype=bool)
        if g.ndim != 4:
            raise MapFileError(f"semantic grids must be (N, rows, cols, classes), got shape {g.shape}")
        n, bits = g.shape[0], int(np.prod(g.shape[1:]))
        return cls(np.packbits(g.reshape(n, bits), axis=1), *g.shape[1:])

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (int(self.packed.shape[0]), *self.grid_shape)

    def __len__(self) -> int:
        return int(self.packed.shape[0])

    def __getitem__(self, index) -> np.ndarray:
        sel = self.packed[index]
        single = sel.ndim == 1
        sel = np.atleast_2d(sel)
        out = np.unpackbits(sel, axis=1, count=self._bits).astype(bool).reshape(len(sel), *self.grid_shape)
        return out[0] if single else out

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)


@dataclass
class MapData:
    """Everything a localizer needs from a map. Arrays may be read-only memory maps after read_map."""

    descriptors: np.ndarray  # (N, D) float16 | float32, unit norm
    poses: np.ndarray  # (N, 7) float64 x y z qx qy qz qw of each viewpoint (LiDAR frame) in frame_id
    viewpoint_ids: np.ndarray  # (N,) int64, unique
    source_frames: np.ndarray  # (N,) int64 mapping-pass frame each viewpoint was generated from
    semantic_grids: Any  # (N, rows, cols, N_S) bool ndarray, or PackedGrids
    prototypes: np.ndarray  # (N_S, C) float32 semantic context for the cross-modal attention
    camera: dict  # reference camera: width height fx fy cx cy, T_cam_velo (4x4 list)
    model_config: dict
    model_checksum: str
    metadata: dict = field(default_factory=dict)
    grid_min_fraction: float = 0.0
    frame_id: str = "map"

    @property
    def num_viewpoints(self) -> int:
        return int(self.descriptors.shape[0])

    @property
    def descriptor_dim(self) -> int:
        return int(self.descriptors.shape[1])

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.semantic_grids.shape[1:])  # type: ignore[return-value]

    def pose_matrices(self, ids: np.ndarray | None = None) -> np.ndarray:
        p = self.poses if ids is None else self.poses[np.asarray(ids)]
        return poses_to_matrices(np.asarray(p))

    def T_cam_velo(self) -> np.ndarray:
        return np.asarray(self.camera.get("T_cam_velo", np.eye(4).tolist()), dtype=np.float64)


# -- poses --------------------------------------------------------------------------------------
# -- validation ---------------------------------------------------------------------------------
def _all_finite(a: np.ndarray) -> bool:
    return all(np.isfinite(a[s : s + _CHUNK_ROWS]).all() for s in range(0, len(a), _CHUNK_ROWS))


def validate_map(m: MapData, where: str) -> None:
    """Raise MapFileError naming ``where`` if the arrays disagree or hold NaN/inf."""
    d = m.descriptors
    if d.ndim != 2 or d.shape[1] < 1:
        raise MapFileError(f"{where}: descriptors must be (N, D), got shape {d.shape}")
    if d.dtype not in (np.float16, np.float32):
        raise MapFileError(f"{where}: descriptors must be float16 or float32, got {d.dtype}")
    n = d.shape[0]
    checks = {
        "poses": (m.poses, (n, 7)),
        "viewpoint_ids": (m.viewpoint_ids, (n,)),
        "source_frames": (m.source_frames, (n,)),
    }
    for name, (arr, shape) in checks.items():
        if tuple(arr.shape) != shape:
            raise MapFileError(
                f"{where}: {name} has shape {tuple(arr.shape)} but there are {n} descriptors (expected {shape}); "
                "the file is inconsistent: rebuild it with `scmpr build-map`"
            )
    gs = tuple(m.semantic_grids.shape)
    if len(gs) != 4 or gs[0] != n or gs[3] != NUM_CLASSES:
        raise MapFileError(
            f"{where}: semantic_grids has shape {gs}, expected ({n}, rows, cols, {NUM_CLASSES}); rebuild the map"
        )
    p = m.prototypes
    if p.ndim != 2 or p.shape[0] != NUM_CLASSES:
        raise MapFileError(f"{where}: prototypes have shape {p.shape}, expected ({NUM_CLASSES}, C); rebuild the map")
    for name, arr in (("descriptors", d), ("poses", m.poses), ("prototypes", p)):
        if not _all_finite(arr):
            raise MapFileError(f"{where}: {name} contain NaN or inf values; rebuild the map (`scmpr build-map`)")
    if n:
        qn = np.linalg.norm(np.asarray(m.poses[:, 3:7], dtype=np.float64), axis=1)
        if np.any(np.abs(qn - 1.0) > 1e-3):
            raise MapFileError(f"{where}: pose quaternions are not unit length (row {int(np.argmax(np.abs(qn - 1)))})")
        if len(np.unique(np.asarray(m.viewpoint_ids))) != n:
            raise MapFileError(f"{where}: viewpoint_ids are not unique")
    if not isinstance(m.model_checksum, str) or not m.model_checksum:
        raise MapFileError(f"{where}: model_checksum must be a non-empty string")


#: fields every header has (``write_map`` writes all of them)
HEADER_FIELDS = (
    "format",
    "version",
    "num_viewpoints",
    "descriptor_dim",
    "descriptor_dtype",
    "frame_id",
    "grid",
    "camera",
    "model_config",
    "model_checksum",
    "metadata",
    "arrays",
)
CAMERA_FIELDS = ("width", "height", "fx", "fy", "cx", "cy", "T_cam_velo")
#: metadata entries that readers use, and the JSON type they must have when present
METADATA_TYPES: dict[str, tuple[type, ...]] = {
    "dataset": (str,),
    "dataset_kind": (str,),
    "dataset_root": (str,),
    "sequence": (str,),
    "town": (str,),
    "places": (int,),
    "created_unix": (int, float),
    "render_modes": (dict,),
}
#: array name -> (allowed dtype strings, number of dimensions)
ARRAY_SPECS: dict[str, tuple[tuple[str, ...], int]] = {
    "descriptors": (("<f2", "<f4"), 2),
    "poses": (("<f8",), 2),
    "viewpoint_ids": (("<i8",), 1),
    "source_frames": (("<i8",), 1),
    "semantic_grids": (("|u1",), 2),
    "prototypes": (("<f4",), 2),
}
_REBUILD = "rebuild the map with `scmpr build-map` (or copy the file again if it was damaged in transfer)"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }.get(type(v), type(v).__name__)


def validate_header(
    header: Any, where: str, data_start: int | None = None, file_size: int | None = None, *, fix: str = ""
) -> None:
    """Raise MapFileError naming the first header field that is missing, of the wrong type or shape,
    or inconsistent with another, and saying what to do (``fix``, default: rebuild the map).
    ``data_start`` / ``file_size`` also check that the arrays fit the file.

    The one place where the header is checked: read_header runs it on every file read (map-info,
    evaluate, map_server, the localizer), write_map before writing."""
    fix = fix or _REBUILD

    def bad(field_: str, problem: str) -> MapFileError:
        return MapFileError(f"{where}: corrupt header: '{field_}' {problem}; {fix}")

    _check_scalar_fields(header, where, fix, bad)
    _check_grid(header["grid"], where, bad)
    _check_camera(header["camera"], bad)
    _check_array_table(header, where, fix, bad, data_start, file_size)


_Fault = Callable[[str, str], MapFileError]


def _check_scalar_fields(header: Any, where: str, fix: str, bad: _Fault) -> None:
    """Presence of every field, version, counts, dtype, frame, model checksum, the two mappings."""
    if not isinstance(header, dict):
        raise bad("(header)", f"is {_json_type(header)}, expected a JSON object")
    if header.get("format") != "scmpr-map":
        raise MapFileError(f"{where}: corrupt header (no 'format: scmpr-map'); {fix}")
    missing = [k for k in HEADER_FIELDS if k not in header]
    if missing:
        raise MapFileError(f"{where}: corrupt header: required field(s) {', '.join(missing)} missing; {fix}")
    if not _is_int(header["version"]) or header["version"] != FORMAT_VERSION:
        raise bad("version", f"is {header['version']!r}, expected {FORMAT_VERSION} (the preamble's version)")
    n, dim = header["num_viewpoints"], header["descriptor_dim"]
    if not _is_int(n) or n < 0:
        raise bad("num_viewpoints", f"is {n!r}, expected an integer >= 0")
    if not _is_int(dim) or dim < 1:
        raise bad("descriptor_dim", f"is {dim!r}, expected an integer >= 1")
    if not isinstance(header["descriptor_dtype"], str) or header["descriptor_dtype"] not in DESCRIPTOR_DTYPES:
        raise bad("descriptor_dtype", f"is {header['descriptor_dtype']!r}, expected one of {sorted(DESCRIPTOR_DTYPES)}")
    if not isinstance(header["frame_id"], str) or not header["frame_id"].strip():
        raise bad("frame_id", f"is {header['frame_id']!r}, expected a non-empty string such as 'map'")
    if not isinstance(header["model_checksum"], str) or not header["model_checksum"]:
        raise bad("model_checksum", f"is {header['model_checksum']!r}, expected the non-empty sha256 of the model")
    for name in ("model_config", "metadata"):
        if not isinstance(header[name], dict):
            raise bad(name, f"is {_json_type(header[name])}, expected an object (a mapping)")
    for key, types in METADATA_TYPES.items():
        v = header["metadata"].get(key)
        if key in header["metadata"] and not (isinstance(v, types) and not isinstance(v, bool)):
            raise bad(
                f"metadata.{key}", f"is {_json_type(v)} ({v!r}), expected {' or '.join(t.__name__ for t in types)}"
            )


def _check_grid(grid: Any, where: str, bad: _Fault) -> None:
    """The semantic grid's shape, class set and packing."""
    if not isinstance(grid, dict):
        raise bad("grid", f"is {_json_type(grid)}, expected an object with rows, cols, num_classes, class_names")
    for key in ("rows", "cols", "num_classes", "class_names", "min_fraction", "packed"):
        if key not in grid:
            raise bad(f"grid.{key}", "is missing")
    for key in ("rows", "cols"):
        if not _is_int(grid[key]) or grid[key] < 1:
            raise bad(f"grid.{key}", f"is {grid[key]!r}, expected an integer >= 1")
    if not _is_int(grid["num_classes"]) or grid["num_classes"] != NUM_CLASSES:
        raise bad("grid.num_classes", f"is {grid['num_classes']!r}, expected {NUM_CLASSES}")
    if not isinstance(grid["class_names"], list) or list(grid["class_names"]) != list(CLASS_NAMES):
        raise MapFileError(
            f"{where}: the map's classes {grid['class_names']} differ from this package's {list(CLASS_NAMES)}; "
            "rebuild the map with this package's `scmpr build-map`"
        )
    if not _is_num(grid["min_fraction"]) or not 0.0 <= grid["min_fraction"] <= 1.0:
        raise bad("grid.min_fraction", f"is {grid['min_fraction']!r}, expected a number in [0, 1]")
    if grid["packed"] != "packbits":
        raise bad("grid.packed", f"is {grid['packed']!r}, expected 'packbits'")


def _check_camera(cam: Any, bad: _Fault) -> None:
    """The reference camera the semantic grid was binned in: size, intrinsics, a rigid T_cam_velo."""
    if not isinstance(cam, dict):
        raise bad("camera", f"is {_json_type(cam)}, expected an object with {', '.join(CAMERA_FIELDS)}")
    absent = [k for k in CAMERA_FIELDS if k not in cam]
    if absent:
        raise bad("camera", f"lacks {', '.join(absent)} (it needs {', '.join(CAMERA_FIELDS)})")
    for key in ("width", "height"):
        if not _is_int(cam[key]) or cam[key] < 1:
            raise bad(f"camera.{key}", f"is {cam[key]!r}, expected an image size in pixels (integer >= 1)")
    for key in ("fx", "fy"):
        if not _is_num(cam[key]) or cam[key] <= 0:
            raise bad(f"camera.{key}", f"is {cam[key]!r}, expected a focal length in pixels (number > 0)")
    for key in ("cx", "cy"):
        if not _is_num(cam[key]):
            raise bad(f"camera.{key}", f"is {cam[key]!r}, expected a principal point in pixels (finite number)")
    T = cam["T_cam_velo"]
    rows_ok = isinstance(T, list) and len(T) == 4 and all(isinstance(r, list) and len(r) == 4 for r in T)
    if not rows_ok or not all(_is_num(v) for r in T for v in r):
        raise bad("camera.T_cam_velo", f"is {T!r}, expected a 4x4 list of finite numbers (LiDAR -> camera)")
    Tm = np.asarray(T, dtype=np.float64)
    R = Tm[:3, :3]
    if np.abs(Tm[3] - [0, 0, 0, 1]).max() > 1e-9 or np.abs(R.T @ R - np.eye(3)).max() > 1e-3:
        raise bad("camera.T_cam_velo", "is not a rigid transform (rotation not orthonormal or last row not 0 0 0 1)")


def _check_array_table(
    header: dict, where: str, fix: str, bad: _Fault, data_start: int | None, file_size: int | None
) -> None:
    """Each array's dtype, shape (against the counts), size, alignment, place in the file; no overlaps."""
    n, dim, grid = header["num_viewpoints"], header["descriptor_dim"], header["grid"]
    table = header["arrays"]
    if not isinstance(table, dict):
        raise bad("arrays", f"is {_json_type(table)}, expected an object naming each array")
    absent = [k for k in ARRAY_SPECS if k not in table]
    if absent:
        raise MapFileError(f"{where}: arrays missing from the map: {', '.join(absent)}; {fix}")
    bits = grid["rows"] * grid["cols"] * grid["num_classes"]
    expected_shape = {
        "descriptors": [n, dim],
        "poses": [n, 7],
        "viewpoint_ids": [n],
        "source_frames": [n],
        "semantic_grids": [n, (bits + 7) // 8],
        "prototypes": [NUM_CLASSES, None],  # None: any C >= 1
    }
    spans = []
    for name, (dtypes, ndim) in ARRAY_SPECS.items():
        e = table[name]
        f = f"arrays.{name}"
        if not isinstance(e, dict) or any(k not in e for k in ("dtype", "shape", "offset", "nbytes")):
            raise bad(f, "must be an object with dtype, shape, offset, nbytes")
        if not isinstance(e["dtype"], str) or e["dtype"] not in dtypes:
            raise bad(f"{f}.dtype", f"is {e['dtype']!r}, expected {' or '.join(map(repr, dtypes))}")
        shape = e["shape"]
        if not isinstance(shape, list) or len(shape) != ndim or not all(_is_int(v) and v >= 0 for v in shape):
            raise bad(f"{f}.shape", f"is {shape!r}, expected {ndim} non-negative integers")
        want = expected_shape[name]
        if any(w is not None and w != v for w, v in zip(want, shape)) or (want[-1] is None and shape[-1] < 1):
            shown = [("C" if w is None else w) for w in want]
            raise MapFileError(
                f"{where}: {name} has shape {shape} but the header describes {shown} "
                f"({n} viewpoints of {dim}-d descriptors, {grid['rows']}x{grid['cols']} grids); {fix}"
            )
        itemsize = np.dtype(e["dtype"]).itemsize
        nbytes = math.prod(shape) * itemsize
        if not _is_int(e["nbytes"]) or e["nbytes"] != nbytes:
            raise bad(f"{f}.nbytes", f"is {e['nbytes']!r}, but {shape} x {itemsize} bytes = {nbytes}")
        if not _is_int(e["offset"]) or e["offset"] < 0 or e["offset"] % ALIGN:
            raise bad(f"{f}.offset", f"is {e['offset']!r}, expected a non-negative multiple of {ALIGN}")
        if data_start is not None and file_size is not None and data_start + e["offset"] + nbytes > file_size:
            raise MapFileError(
                f"{where}: array '{name}' {shape} {e['dtype']} does not fit the file (ends at byte "
                f"{data_start + e['offset'] + nbytes} of {file_size}); {fix}"
            )
        spans.append((e["offset"], e["offset"] + nbytes, name))
    if header["descriptor_dtype"] != np.dtype(table["descriptors"]["dtype"]).name:
        raise bad(
            "descriptor_dtype",
            f"is {header['descriptor_dtype']!r} but arrays.descriptors is {table['descriptors']['dtype']!r}",
        )
    spans.sort()
    for (_, end_a, a), (start_b, end_b, b) in zip(spans, spans[1:]):
        if start_b < end_a and end_b > start_b:
            raise bad(f"arrays.{b}.offset", f"overlaps arrays.{a}")


# -- write --------------------------------------------------------------------------------------


def _pad(n: int) -> int:
    return (-n) % ALIGN


def write_map(path: str | Path, m: MapData) -> int:
    """Validate and write ``m`` atomically; returns the file size in bytes."""
    path = Path(path)
    validate_map(m, str(path))
    grids = m.semantic_grids if isinstance(m.semantic_grids, PackedGrids) else PackedGrids.pack(m.semantic_grids)
    rows, cols, ncls = grids.grid_shape
    arrays = {
        "descriptors": np.ascontiguousarray(m.descriptors),
        "poses": np.ascontiguousarray(m.poses, dtype="<f8"),
        "viewpoint_ids": np.ascontiguousarray(m.viewpoint_ids, dtype="<i8"),
        "source_frames": np.ascontiguousarray(m.source_frames, dtype="<i8"),
        "semantic_grids": np.ascontiguousarray(grids.packed, dtype=np.uint8),
        "prototypes": np.ascontiguousarray(m.prototypes, dtype="<f4"),
    }
    arrays["descriptors"] = arrays["descriptors"].astype(arrays["descriptors"].dtype.newbyteorder("<"), copy=False)
    table = {}
    offset = 0
    for name, arr in arrays.items():
        table[name] = {"dtype": arr.dtype.str, "shape": list(arr.shape), "offset": offset, "nbytes": int(arr.nbytes)}
        offset += arr.nbytes + _pad(arr.nbytes)
    header = {
        "format": "scmpr-map",
        "version": FORMAT_VERSION,
        "num_viewpoints": m.num_viewpoints,
        "descriptor_dim": m.descriptor_dim,
        "descriptor_dtype": str(m.descriptors.dtype),
        "frame_id": m.frame_id,
        "grid": {
            "rows": rows,
            "cols": cols,
            "num_classes": ncls,
            "class_names": list(CLASS_NAMES),
            "min_fraction": float(m.grid_min_fraction),
            "packed": "packbits",
        },
        "camera": m.camera,
        "model_config": m.model_config,
        "model_checksum": m.model_checksum,
        "metadata": {"created_unix": time.time(), **m.metadata},
        "arrays": table,
    }
    try:
        hbytes = json.dumps(header, sort_keys=True, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise MapFileError(f"{path}: map metadata is not plain JSON data: {exc}") from exc
    validate_header(json.loads(hbytes), f"{path} (not written)", fix="fix the MapData given to write_map")
    hbytes += b" " * _pad(PREAMBLE_SIZE + len(hbytes))
    data_start = PREAMBLE_SIZE + len(hbytes)
    total = data_start + offset
    sha = hashlib.sha256(hbytes)
    for arr in arrays.values():
        buf = memoryview(arr.reshape(-1).view(np.uint8)) if arr.size else memoryview(b"")
        sha.update(buf)
        sha.update(b"\0" * _pad(arr.nbytes))
    pre = PREAMBLE.pack(MAGIC, FORMAT_VERSION, 0, len(hbytes), total, sha.digest())
    with atomic_write(path, "wb", clean_stale=True) as fh:
        fh.write(pre + b"\0" * (PREAMBLE_SIZE - len(pre)))
        fh.write(hbytes)
        for arr in arrays.values():
            if arr.size:
                fh.write(memoryview(arr.reshape(-1).view(np.uint8)))
            fh.write(b"\0" * _pad(arr.nbytes))
    return total


# -- read ---------------------------------------------------------------------------------------
def read_header(path: str | Path, verify_checksum: bool = False) -> tuple[dict, int]:
    """(header, data_start) after checking magic, version, size (and the checksum if asked); no arrays."""
    path = Path(path)
    if not path.is_file():
        raise MapFileError(f"map file not found: {path} (build one with `scmpr build-map`)")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        pre = fh.read(PREAMBLE_SIZE)
        if len(pre) < PREAMBLE.size:
            raise MapFileError(f"{path}: truncated ({size} bytes, shorter than the {PREAMBLE_SIZE}-byte preamble)")
        magic, version, _, hlen, total, _ = PREAMBLE.unpack_from(pre)
        if magic != MAGIC:
            raise MapFileError(
                f"{path}: not a .scmpr-map file (starts with {magic!r}, expected {MAGIC!r}); "
                "pass the file written by `scmpr build-map`"
            )
        if version != FORMAT_VERSION:
            raise MapFileError(
                f"{path}: map format version {version}, this scmpr_ros reads version {FORMAT_VERSION}; "
                "rebuild the map with this version's `scmpr build-map`"
            )
        if size < total:
            raise MapFileError(
                f"{path}: truncated: the file has {size} bytes but its header says {total}; "
                "copy it again or rebuild it with `scmpr build-map`"
            )
        if size > total:
            raise MapFileError(f"{path}: {size - total} unexpected bytes after the end of the map ({total} bytes)")
        hbytes = fh.read(hlen)
    if verify_checksum:
        ok, stored, computed = file_checksum_ok(path)
        if not ok:
            raise MapFileError(
                f"{path}: checksum mismatch (stored {stored[:16]}…, content {computed[:16]}…): the file is corrupt; "
                "copy it again or rebuild it with `scmpr build-map`"
            )
    try:
        header = json.loads(hbytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MapFileError(f"{path}: corrupt header ({exc}); rebuild the map with `scmpr build-map`") from exc
    validate_header(header, str(path), PREAMBLE_SIZE + hlen, size)
    return header, PREAMBLE_SIZE + hlen


def file_checksum_ok(path: str | Path) -> tuple[bool, str, str]:
    """(ok, stored hex, computed hex) of the sha256 over bytes [64:]."""
    with open(path, "rb") as fh:
        pre = fh.read(PREAMBLE_SIZE)
        stored = PREAMBLE.unpack_from(pre)[5]
        sha = hashlib.sha256()
        if os.fstat(fh.fileno()).st_size > PREAMBLE_SIZE:
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                step = 64 << 20
                for s in range(PREAMBLE_SIZE, len(mm), step):
                    sha.update(mm[s : s + step])
    return sha.digest() == stored, stored.hex(), sha.hexdigest()


def read_map(
    path: str | Path,
    expected_dim: int | None = None,
    expected_model_checksum: str | None = None,
    verify_checksum: bool = True,
    mmap_arrays: bool = True,
) -> MapData:
    """Load and validate a map; descriptors and grids stay memory-mapped (read-only) by default."""
    path = Path(path)
    header, data_start = read_header(path, verify_checksum=verify_checksum)  # every header field checked there
    try:
        table = header["arrays"]
        grid = header["grid"]
        size = path.stat().st_size
        arrays = {}
        for name in ARRAY_SPECS:
            e = table[name]
            dtype = np.dtype(e["dtype"])
            shape = tuple(e["shape"])
            nbytes = int(e["nbytes"])
            start = data_start + int(e["offset"])
            if start + nbytes > size:  # the file changed since read_header
                raise MapFileError(f"{path}: array '{name}' {shape} {dtype} does not fit the file; {_REBUILD}")
            if mmap_arrays and nbytes:
                arrays[name] = np.memmap(path, dtype=dtype, mode="r", offset=start, shape=shape)
            else:
                with open(path, "rb") as fh:
                    fh.seek(start)
                    arrays[name] = np.frombuffer(fh.read(nbytes), dtype=dtype).reshape(shape)
        grids = PackedGrids(arrays["semantic_grids"], grid["rows"], grid["cols"], grid["num_classes"])
        m = MapData(
            descriptors=arrays["descriptors"],
            poses=arrays["poses"],
            viewpoint_ids=arrays["viewpoint_ids"],
            source_frames=arrays["source_frames"],
            semantic_grids=grids,
            prototypes=arrays["prototypes"],
            camera=header["camera"],
            model_config=header["model_config"],
            model_checksum=header["model_checksum"],
            metadata=header["metadata"],
            grid_min_fraction=float(grid["min_fraction"]),
            frame_id=header["frame_id"],
        )
    except (KeyError, TypeError, ValueError, OSError) as exc:
        raise MapFileError(f"{path}: cannot read the arrays ({exc!r}); {_REBUILD}") from exc
    validate_map(m, str(path))
    if expected_dim is not None and m.descriptor_dim != int(expected_dim):
        raise MapFileError(
            f"{path}: descriptors have dimension {m.descriptor_dim} but the model produces {expected_dim}; "
            "use the model the map was built with, or rebuild the map with this model"
        )
    if expected_model_checksum is not None and m.model_checksum != expected_model_checksum:
        raise MapFileError(
            f"{path}: built with model checksum {m.model_checksum[:12]}…, the model in use has "
            f"{expected_model_checksum[:12]}…; rebuild the map with this model (`scmpr build-map --model ...`) "
            "or load the model it was built with"
        )
    return m


def describe_map(m: MapData, path: str | Path | None = None) -> dict:
    """A JSON-friendly summary (what `scmpr map-info` prints)."""
    xyz = np.asarray(m.poses[:, :3]) if m.num_viewpoints else np.zeros((0, 3))
    info = {
        "file": str(path) if path is not None else None,
        "file_bytes": Path(path).stat().st_size if path is not None else None,
        "format_version": FORMAT_VERSION,
        "viewpoints": m.num_viewpoints,
        "descriptor_dim": m.descriptor_dim,
        "descriptor_dtype": str(m.descriptors.dtype),
        "frame_id": m.frame_id,
        "semantic_grid": {
            "rows": m.grid_shape[0],
            "cols": m.grid_shape[1],
            "classes": m.grid_shape[2],
            "min_fraction": m.grid_min_fraction,
        },
        "prototypes": list(m.prototypes.shape),
        "model_checksum": m.model_checksum,
        "model_config": m.model_config,
        "camera": {k: v for k, v in m.camera.items() if k != "T_cam_velo"},
        "source_frames": int(len(np.unique(np.asarray(m.source_frames)))),
        "extent_m": {
            "min": [round(float(v), 2) for v in xyz.min(0)] if len(xyz) else None,
            "max": [round(float(v), 2) for v in xyz.max(0)] if len(xyz) else None,
        },
        "metadata": m.metadata,
    }
    if info["file_bytes"] and m.num_viewpoints:
        info["bytes_per_1k_viewpoints"] = int(round(info["file_bytes"] / m.num_viewpoints * 1000))
    return info


def camera_dict(camera: Any, T_cam_velo: np.ndarray) -> dict:
    """The ``camera`` entry of a map: CameraConfig fields + T_cam_velo (LiDAR -> camera, 4x4)."""
    d = dataclasses.asdict(camera) if dataclasses.is_dataclass(camera) else dict(camera)
    T = np.asarray(T_cam_velo, dtype=np.float64)
    if T.shape != (4, 4) or not np.isfinite(T).all():
        raise MapFileError(f"T_cam_velo must be a finite 4x4 matrix, got shape {T.shape}")
    d["T_cam_velo"] = T.tolist()
    d = {k: (float(v) if isinstance(v, float) and math.isfinite(v) else v) for k, v in d.items()}
    return d
