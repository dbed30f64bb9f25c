"""How the active map travels from map_server to the localizer: a latched JSON announcement.

map_server validates the map file, then publishes on ``scmpr/map`` (std_msgs/String, reliable,
transient local, depth 1) a JSON object::

    {"schema": "scmpr_ros/map_announcement/1", "version": 3, "path": "/abs/town.scmpr-map",
     "sha256": "<hex of the file bytes>", "size_bytes": 123, "mtime_ns": 171..., "frame_id": "map",
     "num_viewpoints": 1000, "descriptor_dim": 256, "model_checksum": "<hex>"}

and the localizer opens that path itself (read_map memory-maps the arrays), after checking that the
file's size and the sha256 stored in its preamble (over bytes [64:], verified against the content by
read_map) equal the announced ones, so maps of 1M viewpoints (~0.5-1 GB) never pass through DDS;
``version`` grows by one per successful (re)load and is how the localizer notices a swap.  The localizer and
map_server therefore need the same filesystem (same host or a shared mount).  No rclpy here.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from scmpr_ros.errors import InputError, MapFileError

SCHEMA = "scmpr_ros/map_announcement/1"


def stored_checksum(path: str | Path) -> str:
    """Hex sha256 recorded in a map file's preamble (64 bytes read; read_map checks it against the content)."""
    from scmpr_ros.mapping.map_file import PREAMBLE, PREAMBLE_SIZE

    try:
        with open(path, "rb") as handle:
            pre = handle.read(PREAMBLE_SIZE)
    except OSError as exc:
        raise MapFileError(f"{path}: cannot read the map file: {exc}") from exc
    if len(pre) < PREAMBLE.size:
        raise MapFileError(f"{path}: truncated ({len(pre)} bytes, shorter than the map preamble)")
    return PREAMBLE.unpack_from(pre)[5].hex()


@dataclass(frozen=True)
class MapAnnouncement:
    version: int
    path: str
    sha256: str
    size_bytes: int
    mtime_ns: int
    frame_id: str
    num_viewpoints: int
    descriptor_dim: int
    model_checksum: str
    schema: str = SCHEMA

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> MapAnnouncement:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"map announcement is not JSON ({exc}): {text[:120]!r}") from exc
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise InputError(
                f"map announcement has schema {data.get('schema') if isinstance(data, dict) else None!r}, "
                f"expected {SCHEMA!r}; are map_server and localizer the same scmpr_ros version?"
            )
        try:
            return cls(
                version=int(data["version"]),
                path=str(data["path"]),
                sha256=str(data["sha256"]),
                size_bytes=int(data["size_bytes"]),
                mtime_ns=int(data["mtime_ns"]),
                frame_id=str(data["frame_id"]),
                num_viewpoints=int(data["num_viewpoints"]),
                descriptor_dim=int(data["descriptor_dim"]),
                model_checksum=str(data["model_checksum"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"map announcement lacks or mistypes a key ({exc}): {text[:200]!r}") from exc

    def check_file(self) -> None:
        """Raise MapFileError unless the file at ``path`` is the one map_server validated (cheap: stat + 64 bytes)."""
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise MapFileError(
                f"announced map {self.path} is not readable here ({exc}); the localizer needs the "
                "same filesystem as map_server"
            ) from exc
        if st.st_size != self.size_bytes:
            raise MapFileError(
                f"announced map {self.path} has {st.st_size} bytes, map_server announced "
                f"{self.size_bytes}; the file changed after it was loaded — reload map_server"
            )
        digest = stored_checksum(self.path)
        if digest != self.sha256:
            raise MapFileError(
                f"announced map {self.path} has sha256 {digest[:12]}…, map_server announced "
                f"{self.sha256[:12]}…; the file changed after it was loaded — reload map_server"
            )
