"""How much memory genlab lets one allocation take, and the error when something would take more.

The limit is ``GENLAB_MEMORY_LIMIT`` when set (``8G``, ``512M``, ``1.5GB`` or a number of bytes),
else a fraction of the memory available now: MemAvailable of /proc/meminfo, lowered to the room
left under this process's cgroup v2 limit when it has one (a container can be far below the
machine). Readers, model builders and samplers check their estimate with :func:`check_memory`
before allocating, so a wrong size asks for a change instead of ending in the kernel's OOM killer.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import GenlabError

#: Environment variable: the most memory, in bytes (suffixes K, M, G, T), one allocation may take.
ENV = "GENLAB_MEMORY_LIMIT"
#: Without ENV, this fraction of the memory available when the check runs; the rest is left to
#: the model, the optimizer and the rest of the machine.
FRACTION = 0.75
#: Used when the available memory cannot be read (no /proc/meminfo, no sysconf).
FALLBACK = 8 << 30

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_bytes(text: str) -> int:
    """``'8G'`` -> 8 * 2**30; ``'512M'``, ``'1.5GB'``, ``'100KiB'``, ``'123'`` (bytes) likewise;
    ValueError if malformed."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", text or "", re.IGNORECASE)
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


def _cgroup_room() -> int | None:
    """Bytes left under this process's cgroup v2 memory limit, if it has one."""
    try:
        rel = next(line.split(":", 2)[2] for line in Path("/proc/self/cgroup").read_text().splitlines()
                   if line.startswith("0::"))
        folder = Path("/sys/fs/cgroup") / rel.strip().lstrip("/")
        limit = (folder / "memory.max").read_text().strip()
        if not limit.isdigit():
            return None
        return max(0, int(limit) - int((folder / "memory.current").read_text().strip()))
    except (OSError, ValueError, StopIteration, IndexError):
        return None


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
    room = _cgroup_room()
    if room is not None:
        avail = room if avail is None else min(avail, room)
    return avail


def total_memory() -> int | None:
    """Bytes of physical memory of the machine, or None if it cannot be read."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def memory_limit(error: type[GenlabError] = GenlabError) -> tuple[int, str]:
    """(bytes one allocation may take, where that number comes from, in words)."""
    env = os.environ.get(ENV, "").strip()
    if env:
        try:
            return parse_bytes(env), f"the limit set by {ENV}={env}"
        except ValueError:
            raise error(f"{ENV}={env!r} is not a size; write a number of bytes with an optional unit, "
                        "e.g. 8G, 512M or 2000000000.") from None
    avail = available_memory()
    if avail is None:
        return FALLBACK, f"genlab's default limit of {fmt_bytes(FALLBACK)} (the free memory could not be read)"
    return int(avail * FRACTION), f"{FRACTION:.0%} of the {fmt_bytes(avail)} of memory available on this machine"


def check_memory(need: int, what: str, fix: str, error: type[GenlabError] = GenlabError) -> None:
    """``error`` if ``need`` bytes for ``what`` exceed :func:`memory_limit`: it says how much, the
    limit and where it comes from, and ``fix`` (what to change)."""
    limit, source = memory_limit(error)
    if need <= limit:
        return
    total = total_memory()
    more = ""
    if total is None or need < total:  # raising the limit can help only if the machine has the memory
        more = (f" To allow more, set {ENV} (e.g. {ENV}={-(-need // (1 << 30))}G) if the machine really "
                "has that much free.")
    raise error(f"{what} would need about {fmt_bytes(need)} of memory, more than {source} "
                f"({fmt_bytes(limit)}). {fix}{more}")
