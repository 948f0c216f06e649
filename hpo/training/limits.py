"""How much a data file may make hpo read into memory, checked before anything is read.

Every size a file claims (an ``.npz`` member's array shape and dtype, a zip member's sizes, a tar
member's size) is checked against what the file holds and against one bound, so that a damaged or
hostile file is refused in one line without first spending the memory it claims:

- the bound is ``HPO_DATA_MEMORY`` (bytes, or with a unit: ``512M``, ``8G``), by default half of
  the memory available when the command starts (Linux's MemAvailable, or the cgroup's limit when
  that is lower): a data set whose arrays claim more is refused;
- an ``.npz`` member's array (its shape times its dtype's item size, whatever they are) must fit in
  the bytes the member holds; a stored member holds what it occupies in the file, and a deflated
  one at most 1,032 times that (deflate's limit);
- a file far larger than the disk it occupies (a sparse file: its holes read as zeros) is refused.
"""

from __future__ import annotations

import math
import os
import re
import zipfile
from pathlib import Path

import numpy as np

from hpo.errors import ConfigError, DataError

ENV = "HPO_DATA_MEMORY"
DEFLATE_MAX_RATIO = 1032  # zlib: no deflate stream expands to more than about 1032 times its size
SPARSE_FROM = 64 << 20  # a file this long or longer must occupy ...
SPARSE_FRACTION = 1 / 16  # ... at least this share of its length on disk
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def human(n: float) -> str:
    """``n`` bytes for a person: 3.0 GiB, 100 B."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def data_memory() -> int:
    """The most bytes a data set's arrays may claim: ``HPO_DATA_MEMORY``, else half the memory
    available now.

    Raises:
        ConfigError: ``HPO_DATA_MEMORY`` is not a size.
    """
    given = os.environ.get(ENV, "").strip()
    if given:
        match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?", given, flags=re.IGNORECASE)
        if match is None or float(match[1]) <= 0:
            raise ConfigError(f"{ENV}={given!r}: expected a size in bytes, such as 512M or 8G")
        return int(float(match[1]) * _UNITS[match[2].upper()])
    return available_memory() // 2


def available_memory() -> int:
    """Bytes of memory available to this process now: MemAvailable, or its cgroup's room if less."""
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:  # a container's share (cgroup v2), where it is lower
        limit = Path("/sys/fs/cgroup/memory.max").read_text(encoding="ascii").strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text(encoding="ascii"))
        if limit != "max":
            available = min(available, int(limit) - used)
    except (OSError, ValueError):
        pass
    return max(available, 0)


class Budget:
    """What one data file may still make hpo hold: each claim is taken before it is read."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.bound = data_memory()
        self.taken = 0

    def take(self, nbytes: int, what: str) -> None:
        """Count ``nbytes`` more, or refuse the file in one line.

        Raises:
            DataError: the claims so far exceed the bound.
        """
        self.taken += nbytes
        if self.taken > self.bound:
            raise DataError(f"{self.where}: {what} claims {human(nbytes)}; with the rest, {human(self.taken)} is more "
                            f"than hpo reads into memory ({human(self.bound)}: {ENV}, by default half the "
                            "memory available)")


def check_file(path: Path) -> None:
    """Refuse a file that is mostly holes (sparse) before reading it: its length is a claim too.

    Raises:
        DataError: the file occupies far less disk than its length.
    """
    try:
        st = path.stat()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from e
    on_disk = getattr(st, "st_blocks", None)
    if on_disk is not None and st.st_size >= SPARSE_FROM and on_disk * 512 < st.st_size * SPARSE_FRACTION:
        raise DataError(f"{path}: {human(st.st_size)} long but only {human(on_disk * 512)} on disk (a sparse "
                        "file: what it claims to hold is holes, not data)")


def check_npz(path: Path) -> None:
    """Check every member of the ``.npz`` at ``path`` before any is read: its sizes against what
    the archive holds, its array against its member, the whole against :func:`data_memory`.
    Anything not a zip archive is left to the reader.

    Raises:
        DataError: a member claims more than it holds, or the arrays more than the bound.
    """
    if not zipfile.is_zipfile(path):
        return
    budget = Budget(str(path))
    length = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                _check_member(path, archive, info, length)
                budget.take(info.file_size, f"member {info.filename}")
    except (OSError, EOFError, zipfile.BadZipFile, ValueError, NotImplementedError) as e:
        raise DataError(f"{path}: corrupt .npz ({e})") from e


def _check_member(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo, length: int) -> None:
    name = info.filename
    if info.header_offset + info.compress_size > length:
        raise DataError(f"{path}: member {name} claims {human(info.compress_size)} past the end of the file "
                        f"({human(length)}): the archive is cut short or lies")
    if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
        raise DataError(f"{path}: member {name} is stored uncompressed in {human(info.compress_size)} "
                        f"but claims {human(info.file_size)}")
    if info.file_size > max(info.compress_size, 1) * DEFLATE_MAX_RATIO + 1024:
        raise DataError(f"{path}: member {name} claims {human(info.file_size)} from {human(info.compress_size)} "
                        f"compressed, more than compression can give ({DEFLATE_MAX_RATIO}:1)")
    if not name.endswith(".npy"):
        return
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(member)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(member)
        else:
            raise DataError(f"{path}: member {name} is a .npy of format version {version}; hpo reads 1.0 and 2.0")
        header = member.tell()
    claimed = math.prod(shape) * dtype.itemsize
    if claimed > info.file_size - header:
        raise DataError(f"{path}: member {name} claims an array of shape {tuple(shape)} and dtype {dtype} "
                        f"({human(claimed)}) but holds {human(info.file_size - header)}")
