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
import stat
from pathlib import Path

from genlab import memory as _memory
from genlab.errors import DataError
from genlab.memory import ENV, fmt_bytes, parse_bytes  # noqa: F401 - the readers' names for them

#: The most classes a labelled dataset may have (labels 0..MAX_CLASSES-1): a class list and a
#: conditional model's class embedding are sized by the largest label.
MAX_CLASSES = 65_536

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


def check_memory(need: int, what: str, fix: str) -> None:
    """DataError if ``need`` bytes for ``what`` exceed :func:`genlab.memory.memory_limit`; ``fix`` says
    what to change."""
    _memory.check_memory(need, what, fix, DataError)


def memory_limit() -> tuple[int, str]:
    return _memory.memory_limit(DataError)

