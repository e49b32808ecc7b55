"""One writer per folder, and never deleting a folder genlab did not make.

**The lock.** ``genlab train`` (new run or ``--resume``) holds an exclusive lock on its run folder
from the moment it claims the folder until it returns, and ``genlab compare`` holds one on its
comparison folder. The lock is ``fcntl.flock`` on ``FOLDER/.genlab-lock``: the kernel releases
it when the holder's process ends in any way (``kill -9`` included), so a crash never leaves the
folder locked. The file also holds JSON saying who holds the lock (pid, host, since when,
command); a second writer is refused with a ``RunError`` naming the folder and that holder. A
holder record left by a process that ended without releasing (a kill) is taken over with a
one-line message. The file is emptied, not deleted, on release (deleting a lock file races with
the next locker). On a file system without ``flock`` the record alone is used: a holder on this
host whose pid is alive refuses, any other is taken over.

The lock is advisory and only writers take it: ``genlab sample``, ``reconstruct``, ``eval`` and
``genlab.load`` read a run that is being trained (they see its last complete checkpoint, which
is written atomically). ``genlab eval RUN`` does not take it either: it writes only ``eval.json``,
atomically, so two evaluations or an evaluation during training end with one complete file,
and taking the writers' lock would make a run in training impossible to evaluate.

Under torchrun only rank 0 writes, so only rank 0 locks.

**Replacing a folder** (``--overwrite``) is allowed only for a folder that is what it is said
to be (a run folder whose ``config.json`` has format ``genlab-run-1``; a comparison folder whose
``compare.json`` has the comparison settings format), that is not a symbolic link, and that is
not ``/``, the home folder, the working directory or one of their ancestors (symbolic links
resolved). The old folder is not deleted at once: it is renamed to the hidden sibling
``.NAME.replaced`` and deleted only once the new folder holds its first safe result (a run's
first checkpoint; a comparison's results.json). If the process dies before that, the old folder
stays there, and the next writer of NAME says where it is; it is deleted as soon as NAME holds
a safe result (at that next start if it already does). To get the old run back before then,
remove NAME and rename ``.NAME.replaced`` to NAME. A second ``--overwrite`` while an old folder
is kept aside deletes only the new folder that never reached a safe result, and keeps the old
one aside: what is aside is always the last folder that had one.
"""
from __future__ import annotations

import datetime as _dt
import errno
import glob
import json
import os
import shlex
import shutil
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import RunError
from ..fileio import _pid_alive, is_orphan_tmp

LOCK_NAME = ".genlab-lock"
ASIDE_SUFFIX = ".replaced"


def say(message: str) -> None:
    """A one-line notice for the user (on stderr: stdout carries the commands' results)."""
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- the lock


def _holder_record() -> dict[str, Any]:
    argv = list(sys.argv)
    if argv and argv[0].endswith(("__main__.py", "genlab")):
        argv[0] = "genlab"
    command = " ".join(shlex.quote(a) for a in argv)
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "since": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": command[:500]}


def describe_holder(holder: dict[str, Any] | None) -> str:
    """``pid 123 on host h since 2025-01-01T10:00:00+01:00 (genlab train ...)`` or a fallback."""
    if not holder:
        return "another process (it did not say which)"
    text = f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} since {holder.get('since', '?')}"
    if holder.get("command"):
        text += f" ({holder['command']})"
    return text


def _read_record(fd: int) -> dict[str, Any] | None:
    try:
        raw = os.pread(fd, 65536, 0)
        record = json.loads(raw) if raw.strip() else None
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) else None


def _flock_unsupported(e: OSError) -> bool:
    return e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class FolderLock:
    """The exclusive writer lock on ``folder`` (see the module's text). ``acquire`` raises
    ``RunError`` when a live process holds it; use as ``with FolderLock(f, "run folder"):``."""

    def __init__(self, folder: str | Path, what: str = "run folder", notice: Callable[[str], None] = say):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.what = what
        self.notice = notice
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> FolderLock:
        if self._fd is not None:
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as e:
            raise RunError(f"cannot lock the {self.what} {self.folder}: {self.path} cannot be created "
                           f"({e.strerror}). Check that the folder is writable.") from None
        try:
            self._lock_fd(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def _lock_fd(self, fd: int) -> None:
        kernel_lock = True
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:
            kernel_lock = False
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunError(self._busy_message(_read_record(fd))) from None
            if not _flock_unsupported(e):
                raise
            kernel_lock = False
        previous = _read_record(fd)
        if previous and previous.get("pid") != os.getpid():
            same_host = previous.get("host") == socket.gethostname()
            pid = previous.get("pid")
            if not kernel_lock and (not same_host or (isinstance(pid, int) and _pid_alive(pid))):
                raise RunError(self._busy_message(previous))
            where = "" if same_host else f" on host {previous.get('host', '?')}"
            self.notice(f"{self.folder}: taking over the lock left by pid {pid}{where} (since "
                        f"{previous.get('since', '?')}), which is no longer running.")
        data = json.dumps(_holder_record()).encode() + b"\n"
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        try:
            os.fsync(fd)
        except OSError:
            pass

    def _busy_message(self, holder: dict[str, Any] | None) -> str:
        return (f"the {self.what} {self.folder} is in use: {describe_holder(holder)} is writing to it. Wait until "
                f"it ends or stop it (a run stopped with Ctrl-C can be resumed); `genlab sample` and `genlab eval` "
                "can read it meanwhile.")

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # no holder record left behind: the next locker has nothing to take over
        except OSError:
            pass
        os.close(fd)  # releases the flock

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def live_holder(folder: str | Path) -> dict[str, Any] | None:
    """Who holds the lock of ``folder`` right now (its record), or None when nobody does.
    Creates nothing: a folder without a lock file is not locked."""
    path = Path(folder) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return _read_record(fd) or {}
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    except ImportError:
        return None
    finally:
        os.close(fd)


def holds_files(folder: Path) -> bool:
    """Whether ``folder`` holds anything besides its lock file and the temporary files of writers that
    died (a start killed before it wrote anything lasting)."""
    return any(p.name != LOCK_NAME and not is_orphan_tmp(p) for p in folder.iterdir())


# ----------------------------------------------------------------------------- what may be replaced


@dataclass(frozen=True)
class FolderKind:
    """What a folder must be for genlab to replace it, and what makes its content safe."""

    what: str  # "run folder", "comparison folder"
    marker: str  # the file that says what the folder is
    format: str  # the "format" that file must have
    safe_result: str  # a file whose presence means the folder holds a result worth keeping
    keys: tuple[str, ...] = ()  # keys the marker must have besides "format" (genlab writes them all)


def is_kind(folder: Path, kind: FolderKind) -> bool:
    """Whether ``folder``'s marker file parses as a JSON object of ``kind``'s format, with its keys."""
    try:
        record = json.loads((folder / kind.marker).read_bytes())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(record, dict) and record.get("format") == kind.format and all(k in record for k in kind.keys)


def _protected(folder: Path) -> str | None:
    """Why ``folder`` must never be deleted, or None."""
    resolved = folder.resolve()
    cwd = Path.cwd().resolve()
    if resolved == Path(resolved.anchor):
        return "it is the root of the file system"
    if resolved == cwd:
        return "it is the working directory"
    if resolved in cwd.parents:
        return "it holds the working directory"
    try:
        home = Path.home().resolve()
    except (KeyError, RuntimeError):
        home = None
    if home is not None and (resolved == home or resolved in home.parents):
        return "it is the home folder" if resolved == home else "it holds the home folder"
    return None


def check_replaceable(folder: Path, kind: FolderKind, option: str = "--overwrite") -> None:
    """Raise ``RunError`` unless ``option`` may delete ``folder`` (see the module's text)."""
    reason = _protected(folder)
    if reason is None and folder.is_symlink():
        reason = "it is a symbolic link (give the folder it points to, or remove the link)"
    if reason is None and not is_kind(folder, kind):
        reason = (f"it is not a genlab {kind.what}: it has no {kind.marker} of format {kind.format!r} "
                  f"({'missing' if not (folder / kind.marker).exists() else 'it holds another file'})")
    if reason is not None:
        raise RunError(f"refusing to {option} {folder}: {reason}. Nothing was changed; choose another folder.")


def aside_of(folder: Path) -> Path:
    """Where ``--overwrite`` keeps the folder it replaces until the new one holds a safe result."""
    return folder.with_name(f".{folder.name}{ASIDE_SUFFIX}")


def _delete_tree(path: Path) -> None:
    """Delete a folder (or a link) that --overwrite set aside; a RunError says what to do if the file
    system refuses."""
    try:
        if path.is_symlink() or not path.is_dir():
            path.unlink()
        else:
            shutil.rmtree(path)
    except OSError as e:
        raise RunError(f"could not delete {path} ({e.strerror or e}); delete it by hand.") from None


class Claim:
    """A writer's hold on its folder: the lock, and the replaced folder kept aside (if any) until
    ``saved`` says the folder holds a safe result. A context manager releasing the lock."""

    def __init__(self, lock: FolderLock, aside: Path | None = None):
        self.lock = lock
        self.aside = aside

    @property
    def folder(self) -> Path:
        return self.lock.folder

    def saved(self) -> None:
        """The folder now holds a safe result: delete the replaced folder kept aside."""
        aside, self.aside = self.aside, None
        if aside is not None and (aside.exists() or aside.is_symlink()):
            try:
                _delete_tree(aside)
            except RunError as e:  # the new folder is safe all the same: the old one only lingers
                self.lock.notice(f"note: {e}")
                return
            now = "holds a checkpoint" if self.lock.what == "run folder" else "is complete"
            self.lock.notice(f"deleted {aside}, the folder that --overwrite replaced, now that {self.folder} {now}")

    def release(self) -> None:
        self.lock.release()

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _remove_discarded(folder: Path) -> None:
    """Delete ``.NAME.discarded-PID`` siblings (never-saved folders a replacement was deleting) of
    processes that died before they finished."""
    for p in folder.parent.glob(f".{glob.escape(folder.name)}.discarded-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            try:
                _delete_tree(p)
            except RunError:
                pass


def settle_leftover(lock: FolderLock, kind: FolderKind) -> Path | None:
    """With ``lock`` held: a folder kept aside by an earlier ``--overwrite`` of this folder is deleted
    when this folder holds a safe result, else kept (and said where) until it does; returns it then."""
    folder = lock.folder
    _remove_discarded(folder)
    aside = aside_of(folder)
    if not (aside.exists() or aside.is_symlink()):
        return None
    if (folder / kind.safe_result).is_file():
        try:
            _delete_tree(aside)
        except RunError as e:
            lock.notice(f"note: {e}")
            return None
        lock.notice(f"deleted {aside}, left by an earlier --overwrite of {folder}, which has since been "
                    "written safely")
        return None
    lock.notice(f"note: {aside} holds the {kind.what} that an earlier --overwrite replaced; it is kept until "
                f"{folder} holds a {'checkpoint' if kind.what == 'run folder' else 'result'} (to get it back now, "
                f"remove {folder} and rename {aside.name} to {folder.name}).")
    return aside


def replace(lock: FolderLock, kind: FolderKind, option: str = "--overwrite") -> Claim:
    """With ``lock`` held on a replaceable folder (``check_replaceable``): move the folder aside (or, when
    an older one is aside already and this one never reached a safe result, delete this one), create
    the folder anew with an exclusive mkdir, lock it, and release ``lock``. Returns the new claim."""
    folder = lock.folder
    check_replaceable(folder, kind, option)
    _remove_discarded(folder)
    aside = aside_of(folder)
    kept = None
    if aside.exists() or aside.is_symlink():
        if (folder / kind.safe_result).is_file():
            _delete_tree(aside)  # the folder being replaced is the newer safe one: it goes aside instead
        else:
            kept = aside
    if kept is None:
        try:
            os.rename(folder, aside)
        except OSError as e:
            raise RunError(f"{option}: could not move {folder} aside to {aside} ({e.strerror or e}); nothing was "
                           "deleted.") from None
        lock.notice(f"{option}: moved the old {kind.what} to {aside}; it is deleted once {folder} holds "
                    f"a {'checkpoint' if kind.what == 'run folder' else 'result'}.")
    else:
        doomed = folder.with_name(f".{folder.name}.discarded-{os.getpid()}")
        try:
            os.rename(folder, doomed)
        except OSError as e:
            raise RunError(f"{option}: could not move {folder} out of the way ({e.strerror or e}); nothing was "
                           "deleted.") from None
        _delete_tree(doomed)
        lock.notice(f"{option}: deleted {folder}, which never held a "
                    f"{'checkpoint' if kind.what == 'run folder' else 'result'}; the {kind.what} replaced before "
                    f"it stays in {aside} until the new one does.")
        aside = kept
    try:
        folder.mkdir()
    except OSError as e:
        lock.release()
        why = ("it was created by another process meanwhile" if isinstance(e, FileExistsError)
               else e.strerror or str(e))
        raise RunError(f"{option}: could not create {folder} anew ({why}); the old {kind.what} is kept in "
                       f"{aside}.") from None
    new_lock = FolderLock(folder, lock.what, lock.notice)
    try:
        new_lock.acquire()
    except RunError as e:
        raise RunError(f"{e} (The old {kind.what} is kept in {aside}.)") from None
    finally:
        lock.release()
    return Claim(new_lock, aside)
