"""Bounds on what the dataset readers open and allocate.

* :func:`open_regular` opens a file only if it is a regular file. A FIFO, socket or device named
  like a data file would block ``open()`` or ``read()`` forever (a FIFO with no writer), beyond the
  reach of Ctrl-C; it is refused with a DataError instead. The file is opened with ``O_NONBLOCK``
  and checked with ``fstat`` on the opened descriptor, so a file swapped for a FIFO after an
  earlier check cannot block either.
* :func:`memory_limit` is how many bytes a reader may allocate: ``GENLAB_MEMORY_LIMIT`` when set
  (``8G``, ``512M``, or a number of bytes), else a fraction of the memory the machine (or its
  cgroup) has available now. :func:`check_memory` raises a DataError that says how much was
  asked for, the limit, and what to change, before anything that big is allocated.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from genlab.errors import DataError

#: Environment variable: the most memory, in bytes (suffixes K, M, G, T), a dataset may take.
ENV = "GENLAB_MEMORY_LIMIT"
#: Without ENV, a dataset may take this fraction of the memory available when it is loaded;
#: the rest is left to the model, the optimizer and the rest of the machine.
FRACTION = 0.75
#: Used when the available memory cannot be read (no /proc/meminfo, no sysconf).
FALLBACK = 8 << 30

#: The most classes a labelled dataset may have (labels 0..MAX_CLASSES-1): a class list and a
#: conditional model's class embedding are sized by the largest label.
MAX_CLASSES = 65_536

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder"))


def kind_of(mode: int) -> str:
    """What a non-regular file is, in words, from its ``st_mode``."""
    return next((words for test, words in _KINDS if test(mode)), "not a regular file")


def check_regular(path: Path, what: str = "file") -> os.stat_result:
    """``os.stat(path)`` (following symlinks) without opening it; DataError unless it is a regular file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise DataError(f"{path} is a broken symbolic link (to {os.readlink(path)}); "
                            f"remove it or point it at the {what}.") from None
        raise DataError(f"{what} not found: {path}") from None
    except OSError as e:
        raise DataError(f"cannot read {what} {path}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise DataError(f"{path} is {kind_of(st.st_mode)}, not a regular file; genlab reads only regular "
                        f"files (reading this one could block forever). Remove it or replace it with the {what}.")
    return st


def open_regular(path: Path, what: str = "file"):
    """Open ``path`` for binary reading if it is a regular file (see the module notes); else DataError."""
    check_regular(path, what)  # never open a FIFO or device in the first place
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise DataError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a folder, not a {what}") from None
    except OSError as e:
        raise DataError(f"cannot read {what} {path}: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # replaced since the check above
            raise DataError(f"{path} is {kind_of(st.st_mode)}, not a regular file; genlab reads only regular "
                            f"files. Remove it or replace it with the {what}.")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def parse_bytes(text: str) -> int:
    """``'8G'`` -> 8 * 2**30; ``'512M'``, ``'100K'``, ``'123'`` (bytes) likewise; ValueError if malformed."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(text)
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def fmt_bytes(n: float) -> str:
    """A byte count for people: '1.5 GB', '300 MB', '12 kB' (powers of 1024)."""
    for unit, size in (("TB", 1 << 40), ("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= size:
            v = n / size
            return f"{v:.1f} {unit}" if v < 100 else f"{v:,.0f} {unit}"
    return f"{int(n)} bytes"


def available_memory() -> int | None:
    """Bytes of memory available now: MemAvailable, lowered to the cgroup's headroom when one is set."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            pass
    try:  # cgroup v2: a container's own limit can be far below the machine's free memory
        with open("/sys/fs/cgroup/memory.max") as f:
            top = f.read().strip()
        if top.isdigit():
            with open("/sys/fs/cgroup/memory.current") as f:
                room = max(0, int(top) - int(f.read().strip()))
            avail = room if avail is None else min(avail, room)
    except (OSError, ValueError):
        pass
    return avail


def memory_limit() -> tuple[int, str]:
    """(bytes a dataset may take, where that number comes from, in words)."""
    env = os.environ.get(ENV, "").strip()
    if env:
        try:
            return parse_bytes(env), f"the limit set by {ENV}={env}"
        except ValueError:
            raise DataError(f"{ENV}={env!r} is not a size; write a number of bytes with an optional unit, "
                            "e.g. 8G, 512M or 2000000000.") from None
    avail = available_memory()
    if avail is None:
        return FALLBACK, f"genlab's default limit of {fmt_bytes(FALLBACK)} (the free memory could not be read)"
    return int(avail * FRACTION), (f"{FRACTION:.0%} of the {fmt_bytes(avail)} of memory available on this machine")


def total_memory() -> int | None:
    """Bytes of physical memory of the machine (MemTotal), or None if it cannot be read."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(need: int, what: str, fix: str) -> None:
    """DataError if ``need`` bytes for ``what`` exceed :func:`memory_limit`; ``fix`` says what to change."""
    limit, source = memory_limit()
    if need > limit:
        total = total_memory()
        more = ""
        if total is None or need < total:  # raising the limit can help only if the machine has the memory
            more = (f" To allow more, set {ENV} (e.g. {ENV}={-(-need // (1 << 30))}G) if the machine really "
                    "has that much free.")
        raise DataError(f"{what} would need about {fmt_bytes(need)} of memory, more than {source} "
                        f"({fmt_bytes(limit)}). {fix}{more}")
