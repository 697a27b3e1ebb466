"""Knowing that a landing folder has not changed without walking it.

An unchanged sensor tick over 100,000 files walked and stat-ed every one of them: about a
second, so the sensor rested four seconds after each such tick to stay within a fifth of a
core, and a modified document waited up to five seconds for its tick. The kernel already knows
when anything under the folder changes: a watch (inotify) counts the changes, and a tick
whose previous listing was taken with no change counted since skips the walk. The watch only
decides *whether* to walk, never what is there: a walk still lists everything, so a missed
event can delay a change but not lose it, and a full walk is made every FULL_WALK_SECONDS
whatever the watch says.

Only on local file systems: inotify does not see writes made by other hosts to a network file
system (NFS, SMB, FUSE mounts), and there the sensor walks every tick as before.
"""

from __future__ import annotations

import ctypes
import os
import struct
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path

# A walk at least this often even when the watch saw nothing (a change the kernel did not
# report, a watch that quietly stopped): the longest a missed change can wait.
FULL_WALK_SECONDS = 30.0
# File systems whose changes inotify reports whoever makes them (the kernel's own).
LOCAL_FILE_SYSTEMS = frozenset({
    "ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "overlay", "zfs", "f2fs", "reiserfs", "jfs", "bcachefs",
    "ramfs",
})


def file_system_type(path: Path, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The type of the file system holding `path` (the longest mount point above it), or None."""
    try:
        target = os.path.realpath(path)
        best, kind = "", None
        with open(mountinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                mount_point = fields[4].replace("\\040", " ")
                fs_type = fields[fields.index("-") + 1]
                inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
                if inside and len(mount_point) >= len(best):
                    best, kind = mount_point, fs_type
        return kind
    except (OSError, ValueError, IndexError):
        return None


# inotify(7), through libc: watchdog's Observer delivers events from a thread half a second
# late (it pairs moves), and a tick must count every change made before it asks.
IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE = 0x2, 0x4, 0x8
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF, IN_MOVE_SELF, IN_Q_OVERFLOW, IN_IGNORED = 0x400, 0x800, 0x4000, 0x8000
IN_ONLYDIR, IN_DONT_FOLLOW, IN_ISDIR = 0x01000000, 0x02000000, 0x40000000
IN_NONBLOCK, IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC
WATCHED = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
           | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR | IN_DONT_FOLLOW)
# The watches no longer stand for the tree: events were lost (the queue overflowed), or a
# folder moved (the paths the watches were added under are wrong). The watch is redone.
RESTRUCTURED = IN_Q_OVERFLOW | IN_MOVE_SELF
# A folder made or moved in: watched from now on, with whatever it already holds.
ARRIVED = IN_CREATE | IN_MOVED_TO
_EVENT = struct.Struct("iIII")
_libc = None


def _inotify():  # noqa: ANN202
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.inotify_init1.argtypes = [ctypes.c_int]
        _libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    return _libc


class FolderWatch:
    """One inotify instance over `root` and every folder under it, drained without blocking
    when a mark is asked for. The kernel queues an event before the call that causes it
    returns, so every change made before `mark()` is counted in it. Counted: creations, writes,
    metadata, deletions and moves of uploads; not reads, and not hidden or temporary names
    (never uploads), though a rename to a real name is."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        st = os.stat(self.root)
        self.identity = (st.st_dev, st.st_ino)
        self._instance = uuid.uuid4().hex[:12]
        self._changes = 0
        self._stale = False
        self._lock = threading.Lock()
        self._folders: dict[int, bytes] = {}  # watch descriptor: the folder it was added for
        self._fd = _inotify().inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        try:
            self._root_wd = self._watch_tree(os.fsencode(self.root), strict=True)
        except BaseException:
            os.close(self._fd)
            raise

    def _watch_tree(self, top: bytes, *, strict: bool = False) -> int:
        """Watch `top` and every folder under it; the descriptor of `top`. Symbolic links are
        never followed (os.walk does not), as a scan never follows one. Not `strict`: a folder
        gone or unreadable by now is left out (the walk this tick still lists what is there)."""
        libc = _inotify()
        first = -1
        for folder, _, _ in os.walk(top, onerror=_raise if strict else None):
            wd = libc.inotify_add_watch(self._fd, folder, WATCHED)
            if wd < 0:
                if strict:
                    raise OSError(ctypes.get_errno(), f"inotify_add_watch {os.fsdecode(folder)}")
                continue
            self._folders[wd] = folder
            first = wd if first < 0 else first
        return first

    def _drain(self) -> None:
        from rag_pipeline.core.inbox import is_ignored

        while True:
            try:
                data = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                return
            offset = 0
            while offset < len(data):
                wd, mask, _, size = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size: offset + _EVENT.size + size].rstrip(b"\0")
                offset += _EVENT.size + size
                root_gone = wd == self._root_wd and mask & (IN_DELETE_SELF | IN_IGNORED)
                if mask & IN_ISDIR or mask & RESTRUCTURED or root_gone:
                    self._changes += 1
                    if mask & (RESTRUCTURED | IN_MOVED_FROM) or root_gone:
                        self._stale = True
                    elif mask & ARRIVED and wd in self._folders:
                        # Only the new folder's own tree is walked, not the whole landing folder.
                        self._watch_tree(os.path.join(self._folders[wd], name))
                elif mask & IN_IGNORED:
                    self._folders.pop(wd, None)  # a folder under the root removed: its watch went with it
                elif name and not is_ignored(os.fsdecode(name)):
                    self._changes += 1

    def mark(self) -> str | None:
        """None once the watch no longer stands for the folder (see `mark_for`)."""
        with self._lock:
            if self._fd < 0:
                return None
            try:
                st = os.stat(self.root)
                self._drain()
            except OSError:
                return None
            if self._stale or (st.st_dev, st.st_ino) != self.identity:
                return None
            return f"{self._instance}:{self._changes}"

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def _raise(exc: OSError) -> None:
    raise exc


# Folders watched at once by this process, the least recently asked closed first: a code
# server has one landing folder, and each watch holds one of the user's inotify instances
# (128 by default on Linux).
MAX_WATCHES = 4
_WATCHES: "OrderedDict[str, FolderWatch]" = OrderedDict()
_FAILED: dict[str, float] = {}  # folder: when a watch on it last failed (monotonic seconds)
_WATCHES_LOCK = threading.Lock()


def mark_for(root: Path) -> str | None:
    """The change mark of the landing folder `root`, watched from the first call on in this
    process (the code server, which evaluates the sensor). None where it cannot be watched (a
    network file system, a folder not made yet, inotify's limits reached): walk it."""
    key = os.path.realpath(root)
    with _WATCHES_LOCK:
        watch = _WATCHES.get(key)
        if watch is not None:
            _WATCHES.move_to_end(key)
            mark = watch.mark()
            if mark is not None:
                return mark
            watch.close()  # stale (events lost, a folder moved, the root replaced): watched afresh
            del _WATCHES[key]
        if not os.path.isdir(key) or file_system_type(Path(key)) not in LOCAL_FILE_SYSTEMS:
            return None  # asked again next time: a folder may be made, never a mount changed
        if time.monotonic() < _FAILED.get(key, float("-inf")) + FULL_WALK_SECONDS:
            return None
        try:
            watch = FolderWatch(Path(key))
        except OSError:
            # inotify's watch or instance limit, a folder that cannot be read: walk every
            # tick, and try again after a while (a limit raised, a permission fixed).
            _FAILED[key] = time.monotonic()
            return None
        _FAILED.pop(key, None)
        _WATCHES[key] = watch
        while len(_WATCHES) > MAX_WATCHES:
            _WATCHES.popitem(last=False)[1].close()
        return watch.mark()
