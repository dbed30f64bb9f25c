"""Atomic file writes (nothing is ever half-written) and PNG figures written the same way.

Write to a temporary file in the target directory, fsync, then ``os.replace`` (atomic on POSIX).
The temporary file is ``.NAME.pidPID.XXXXXXXX.tmp`` (``XXXXXXXX`` from ``tempfile.mkstemp``): a writer
killed before its ``os.replace`` (SIGKILL, power loss) leaves it behind, and ``remove_stale_temp_files``
removes such leftovers of one target on a later run: those whose process is gone, and any (also the
older ``.NAME.XXXXXXXX.tmp`` without a PID) untouched for ``TEMP_MAX_AGE_S``.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

#: a temporary file older than this (no write for a day) is a leftover even if its PID is in use again
TEMP_MAX_AGE_S = 24 * 3600.0
# what follows ".NAME." in an atomic_write temporary file: optional "pidPID.", mkstemp's 8 characters, ".tmp"
_TEMP_REST = re.compile(r"(?:pid(\d+)\.)?[a-z0-9_]{8}\.tmp")


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (True when that cannot be told: never delete on a guess)."""
    if pid <= 0:
        return False
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, as another user
        return True
    return True


def stale_temp_files(path: str | Path, max_age_s: float = TEMP_MAX_AGE_S) -> list[Path]:
    """Temporary files that ``atomic_write(path)`` calls killed before their rename left next to ``path``."""
    path = Path(path)
    prefix = f".{path.name}."
    now = time.time()
    found = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return []
    for e in entries:
        if not e.name.startswith(prefix):
            continue
        m = _TEMP_REST.fullmatch(e.name[len(prefix) :])
        if m is None:
            continue
        try:
            if not e.is_file(follow_symlinks=False):
                continue
            age = now - e.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        pid = int(m.group(1)) if m.group(1) else None
        dead = pid is not None and pid != os.getpid() and not pid_alive(pid)
        if dead or age > max_age_s:
            found.append(Path(e.path))
    return sorted(found)


def remove_stale_temp_files(path: str | Path, max_age_s: float = TEMP_MAX_AGE_S) -> list[Path]:
    """Delete what ``stale_temp_files`` finds; returns the paths removed (the target itself is never touched)."""
    removed = []
    for p in stale_temp_files(path, max_age_s):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            removed.append(p)
    return removed


def remove_path(path: str | Path) -> None:
    """Remove a file, link or directory tree; nothing if it is not there."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def exchange_paths(a: str | Path, b: str | Path) -> bool:
    """Atomically swap two existing paths (Linux ``renameat2(RENAME_EXCHANGE)``, e.g. two directories).

    Returns False, changing nothing, where the kernel, C library or file system cannot (the caller then
    falls back to two renames)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(os.fspath(a)), at_fdcwd, os.fsencode(os.fspath(b)), rename_exchange) == 0


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb", *, clean_stale: bool = False) -> Iterator[IO]:
    """Context manager yielding a file object; the target appears only if the block succeeds.

    ``clean_stale``: first remove this target's temporary files left by killed writers (one directory
    listing: use it for big, rarely written files such as maps, not for a folder written file by file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if clean_stale:
        with contextlib.suppress(OSError):  # cleaning up never makes the write itself fail
            remove_stale_temp_files(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.pid{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_write(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_write(path, "w") as handle:
        handle.write(text)


def pyplot_agg():
    """matplotlib.pyplot with the non-interactive Agg backend (imported on first use: it is slow)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def write_figure_png(fig, path: str | Path, dpi: int = 120) -> Path:
    """Save a matplotlib figure as PNG atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
