"""The landing directory: `<inbox>/<knowledge base>/<relative path>`.

Reading is confined to the inbox: symlinks are never followed and every path is checked to
resolve inside it. Hidden and temporary files are never picked up, which is also how writers
(our own `ingest`, or anyone using temp-name-then-rename) keep half-written files invisible.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from rag_pipeline.core.identity import DEFAULT_KB, KB_NAME_RE, document_id, validate_kb_name
from rag_pipeline.core.parsing.base import over_file_limit

TEMP_SUFFIXES = (".part", ".tmp", ".crdownload", ".partial", ".swp")


@dataclass(frozen=True)
class FileStat:
    knowledge_base: str
    path: str  # POSIX, relative to the knowledge base folder
    size: int
    mtime_ns: int
    # What says the content changed where mtime cannot (an S3 ETag); None for a file, whose
    # change token is its mtime.
    token: str | None = None


def is_ignored(name: str) -> bool:
    return name.startswith((".", "~$", "~")) or name.endswith(TEMP_SUFFIXES)


_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def shown(path: str) -> str:
    """A path as it may appear in a log line: a newline in a file name must not forge a line."""
    return _CONTROL_RE.sub(lambda m: f"\\x{ord(m.group()):02x}", path)


def _storable_name(name: str) -> bool:
    # Names that are not UTF-8 arrive surrogate-escaped; no database column can hold them.
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


@dataclass(frozen=True)
class Refusal:
    stat: FileStat
    reason: str


@dataclass
class Scan:
    files: dict[tuple[str, str], FileStat]  # ready to be registered
    problems: list[str]  # entries that cannot be documents at all (no knowledge base, bad name)
    held: set[tuple[str, str]]  # present but not taken now (still settling)
    unlisted: list[str]  # knowledge-base-relative folders that could not be listed
    # Documents refused without being read (symbolic links, over the size limit): registered as
    # failed with the reason, so they show in `status` and the UI like any other failure.
    refused: dict[tuple[str, str], Refusal] = field(default_factory=dict)
    # How long the listing waited for files about to settle (`scan`'s settle_wait_seconds).
    settle_wait_seconds: float = 0.0

    def may_be_present(self, knowledge_base: str, path: str) -> bool:
        """False only when the scan proves the file is gone: a deletion must never be inferred
        from a folder we could not read or a file we chose not to take."""
        key = (knowledge_base, path)
        if key in self.files or key in self.held or key in self.refused:
            return True
        return any(
            f"{knowledge_base}/{path}".startswith(folder.rstrip("/") + "/") or folder == "" for folder in self.unlisted
        )


def scan(
    inbox: Path, min_age_seconds: float = 0.0, now_ns: int | None = None, max_file_bytes: int | None = None,
    settle_wait_seconds: float = 0.0,
) -> Scan:
    """List the inbox: the files to register, those refused unread, the problems found, and what
    was held back. Nothing is opened here: entries are only listed and lstat-ed.

    `settle_wait_seconds`: files that settle within this time are waited for and looked at
    again (lstat) rather than left for a later listing; one still changing stays held."""
    result = Scan({}, [], set(), [])
    settling: dict[tuple[str, str], tuple[str, FileStat]] = {}
    files, problems, held, refused = result.files, result.problems, result.held, result.refused
    if not inbox.is_dir():
        result.problems.append(f"{inbox}: the landing directory does not exist")
        result.unlisted.append("")
        return result
    now_ns = now_ns if now_ns is not None else _now_ns()
    min_age_ns = int(min_age_seconds * 1e9)

    def walk(folder: str, kb: str, prefix: str) -> None:
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            problems.append(f"{kb}/{shown(prefix)}: cannot list ({exc.strerror})")
            result.unlisted.append(f"{kb}/{prefix}")
            return
        for entry in entries:
            if is_ignored(entry.name):
                continue
            rel = f"{prefix}{entry.name}"
            if not _storable_name(entry.name):
                problems.append(f"{kb}/{shown(rel.encode('utf-8', 'surrogateescape').decode('utf-8', 'replace'))}: "
                                "file name is not valid UTF-8; rename it")
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # gone between listing and stat
            except OSError as exc:
                # Present but not stat-able (a folder without search permission, a stale mount):
                # held, never taken for a deletion.
                problems.append(f"{kb}/{shown(rel)}: cannot read its size and time ({exc.strerror})")
                held.add((kb, rel))
                continue
            stat = FileStat(kb, rel, st.st_size, st.st_mtime_ns)
            if entry.is_symlink():
                refused[(kb, rel)] = Refusal(stat, "symbolic link refused: uploads must be regular files inside "
                                                    "the landing directory (a link is never followed)")
                continue
            if entry.is_dir(follow_symlinks=False):
                walk(entry.path, kb, rel + "/")
            elif entry.is_file(follow_symlinks=False):
                if now_ns - st.st_mtime_ns < min_age_ns:
                    held.add((kb, rel))  # still settling: looked at again later
                    settling[(kb, rel)] = (entry.path, stat)
                    continue
                take(stat)

    def take(stat: FileStat) -> None:
        if max_file_bytes is not None and stat.size > max_file_bytes:
            # Refused on its size alone: never hashed or read.
            refused[(stat.knowledge_base, stat.path)] = Refusal(stat, over_file_limit(stat.size, max_file_bytes))
        else:
            files[(stat.knowledge_base, stat.path)] = stat

    for entry in os.scandir(inbox):
        name = shown(entry.name.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
        if is_ignored(entry.name):
            continue
        if entry.is_symlink():
            problems.append(f"{name}: symbolic link refused (a knowledge base must be a real folder)")
        elif entry.is_dir(follow_symlinks=False):
            if not KB_NAME_RE.match(entry.name):
                problems.append(f"{name}: not a valid knowledge base name (up to 64 letters, digits, '.', '_', '-')")
                continue
            walk(entry.path, entry.name, "")
        elif entry.is_file(follow_symlinks=False):
            problems.append(f"{name}: files belong in a knowledge base folder, e.g. {DEFAULT_KB}/{name}")
    if settling and settle_wait_seconds > 0:
        _wait_for_settling(result, settling, min_age_ns, now_ns + int(settle_wait_seconds * 1e9), take)
    return result


SETTLE_WAIT_FILES = 5_000


def _wait_for_settling(result: Scan, settling: dict, min_age_ns: int, horizon_ns: int, take) -> None:  # noqa: ANN001
    """Sleep until the settling files due by `horizon_ns` are due, then take each one whose
    size and time have not moved since it was listed (a writer still at work keeps it held)."""
    import stat as stat_module
    import time

    due = {key: listed.mtime_ns + min_age_ns for key, (_, listed) in settling.items()}
    # The first due, up to SETTLE_WAIT_FILES: while a large drop is still being copied, each
    # listing looks again at a bounded number of files, not at every file of the last second.
    soon = sorted((key for key, at in due.items() if at <= horizon_ns), key=due.__getitem__)[:SETTLE_WAIT_FILES]
    if not soon:
        return
    pause = (max(due[key] for key in soon) - _now_ns()) / 1e9
    if pause > 0:
        time.sleep(pause)
        result.settle_wait_seconds = pause
    now_ns = _now_ns()
    for key in soon:
        path, listed = settling[key]
        try:
            st = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            result.held.discard(key)  # gone while it settled: the listing no longer holds it
            continue
        except OSError:
            continue
        if (not stat_module.S_ISREG(st.st_mode) or (st.st_size, st.st_mtime_ns) != (listed.size, listed.mtime_ns)
                or now_ns - st.st_mtime_ns < min_age_ns):
            continue
        result.held.discard(key)
        take(listed)


def _now_ns() -> int:
    import time

    return time.time_ns()


def resolve_inside(inbox: Path, knowledge_base: str, path: str) -> Path:
    """The file for (kb, path), guaranteed inside the inbox; raises PermissionError otherwise."""
    root = inbox.resolve()
    candidate = root / knowledge_base / path
    resolved = candidate.resolve()
    if root not in resolved.parents or candidate.is_symlink():
        raise PermissionError(f"{knowledge_base}/{path} resolves outside the landing directory")
    return resolved


def open_inside(inbox: Path, knowledge_base: str, path: str):  # noqa: ANN201
    """Open for reading without following a symlink at the last component."""
    target = resolve_inside(inbox, knowledge_base, path)
    fd = os.open(target, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    return os.fdopen(fd, "rb")


def ingest(sources: list[Path], inbox: Path, knowledge_base: str = DEFAULT_KB) -> list[tuple[str, str, str]]:
    """Copy files or folders into the inbox atomically. Returns (document id, kb, path) each."""
    validate_kb_name(knowledge_base)
    dest_root = inbox / knowledge_base
    return [_copy_atomic(file, dest_root, rel, knowledge_base) for file, rel in ingest_plan(sources)]


def ingest_plan(sources: list[Path]) -> list[tuple[Path, str]]:
    """What `ingest` copies: (file, path inside the knowledge base) for files and folders given,
    skipping links and hidden or temporary names as a scan would."""
    out: list[tuple[Path, str]] = []
    for source in sources:
        source = Path(source)
        if source.is_dir():
            for file in sorted(p for p in source.rglob("*") if p.is_file() and not p.is_symlink()):
                rel = file.relative_to(source)
                if any(is_ignored(part) for part in rel.parts):
                    continue
                out.append((file, rel.as_posix()))
        elif source.is_file():
            out.append((source, source.name))
        else:
            raise FileNotFoundError(f"no such file or folder: {source}")
    return out


def _copy_atomic(source: Path, dest_root: Path, rel: str, knowledge_base: str) -> tuple[str, str, str]:
    target = dest_root / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    # A hidden temp name in the target folder: invisible to scans, and the rename is atomic.
    fd, tmp = tempfile.mkstemp(prefix=".ingest-", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return document_id(knowledge_base, rel), knowledge_base, rel
