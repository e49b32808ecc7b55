"""Files that survive a kill or a full disk.

* Atomic writes (``atomic_write_bytes``/``atomic_write_json``): a reader, or a kill, sees the
  old file or the new one, never half of one. The temporary file is ``.NAME.tmp-PID`` beside
  the target; ``remove_orphan_tmp`` deletes those left by processes that died mid-write.
* Append-only logs (``append_line``/``read_jsonl``): each line goes to the file in one
  ``write`` call; a line torn by a kill or a full disk is cut off before the next append, and
  readers skip what does not parse instead of failing on it.
"""
from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path
from typing import Any

_TMP = re.compile(r"^\..+\.tmp-(\d+)$")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def disk_full(e: OSError) -> bool:
    """Whether a failed write ran out of space (ENOSPC) or quota (EDQUOT)."""
    return e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def write_error_cause(e: OSError) -> str:
    """A failed write's cause in a few words, for messages: "disk full", else the system's words."""
    return "disk full" if disk_full(e) else f"error {e.strerror or e}"


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # gone, or a number no process can have
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def is_orphan_tmp(path: Path) -> bool:
    """Whether ``path`` is the ``.NAME.tmp-PID`` file of an atomic write whose process is gone."""
    path = Path(path)
    m = _TMP.match(path.name)
    return bool(m) and path.is_file() and not path.is_symlink() and not _pid_alive(int(m.group(1)))


def remove_orphan_tmp(folder: Path, recursive: bool = True) -> list[Path]:
    """Delete the ``.NAME.tmp-PID`` files of atomic writes whose process is gone (killed mid-write);
    returns what was removed. Files of live processes are left alone."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    candidates = folder.rglob(".*.tmp-*") if recursive else folder.glob(".*.tmp-*")
    for p in candidates:
        if is_orphan_tmp(p):
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed


def _trim_partial_tail(fd: int) -> None:
    """Cut a last line that lacks its newline (torn by a kill or a full disk) off the file."""
    size = os.lseek(fd, 0, os.SEEK_END)
    if size == 0:
        return
    if os.pread(fd, 1, size - 1) == b"\n":
        return
    pos, chunk = size, 4096
    while pos > 0:
        start = max(0, pos - chunk)
        block = os.pread(fd, pos - start, start)
        i = block.rfind(b"\n")
        if i >= 0:
            os.ftruncate(fd, start + i + 1)
            return
        pos = start
    os.ftruncate(fd, 0)


def append_line(path: Path, text: str) -> None:
    """Append ``text`` and a newline to ``path`` in a single ``write`` (so lines of concurrent or
    killed writers never interleave within a line). A torn last line left by an earlier failure
    is removed first, so it cannot swallow this one. On a full disk the error propagates after
    the partial line is cut off again: every complete line before it survives."""
    path = Path(path)
    data = (text.rstrip("\n") + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        _trim_partial_tail(fd)
        try:
            n = os.write(fd, data)
            if n != len(data):
                raise OSError(28, f"short write to {path} ({n} of {len(data)} bytes)")
        except OSError:
            try:
                _trim_partial_tail(fd)
            except OSError:
                pass
            raise
    finally:
        os.close(fd)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file, one per line; lines that are blank, torn or not an
    object are skipped (a missing file reads as no lines)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return []
    out = []
    for line in raw.split(b"\n"):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out
