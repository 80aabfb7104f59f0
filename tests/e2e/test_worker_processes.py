"""Real ``python -m service worker`` processes on a real PostgreSQL, for the behaviour that is
about processes: many workers exactly-once, ``kill -9`` mid-job, SIGTERM with jobs in flight, a
second signal, and a PostgreSQL restart under load.

The recording handler (``tests/worker_handlers.py``) is injected with
``AI_SERVICE_EXTRA_HANDLERS``; it writes one line per invocation, so a job that ran twice is
visible. Tests wait on database outcomes and process exits with generous deadlines; none
sleeps for timing or asserts a duration.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from service.config import FIELDS
from service.db.embedded import FAST_SETTINGS, EmbeddedPostgres
from service.db.migrate import migrate
from tests.helpers import ROOT, free_port, http_ok, wait_for
from tests.worker_handlers import INVOCATIONS_ENV, PROFILES_ENV, read_invocations

pytestmark = pytest.mark.slow

A, B = "test-a", "test-b"


class WorkerProcess:
    def __init__(self, db_url: str, tmp: Path, name: str, **env: str) -> None:
        self.name = name
        self.port = free_port()
        self.invocations = tmp / "invocations.log"
        self.output = tmp / f"worker-{name}.log"
        clean = {k: v for k, v in os.environ.items() if k not in {f.env for f in FIELDS}}
        full_env = {
            **clean,
            "DATABASE_URL": db_url,
            "MIGRATE_ON_START": "false",
            "WORKER_ID": name,
            "WORKER_HTTP_HOST": "127.0.0.1",
            "WORKER_HTTP_PORT": str(self.port),
            "WORKER_POLL_INTERVAL": "1h",  # every wake-up here comes from NOTIFY
            "LOG_FORMAT": "console",
            "AI_SERVICE_EXTRA_HANDLERS": "tests.worker_handlers:register",
            INVOCATIONS_ENV: str(self.invocations),
            PROFILES_ENV: f"{A},{B}",
            **env,
        }
        with self.output.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "service", "worker", "--profile", A, "--profile", B],
                env=full_env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self) -> WorkerProcess:
        wait_for(lambda: self._ready(), what=f"worker {self.name} to be ready")
        return self

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"worker {self.name} exited early:\n{self.log()}")
        return http_ok(f"{self.url}/readyz")

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(f"{self.url}/worker/status", timeout=5).json()
        return body

    def log(self) -> str:
        return self.output.read_text()

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for w in started:
        w.kill()


def start(workers: list[WorkerProcess], *args: Any, **env: str) -> WorkerProcess:
    w = WorkerProcess(*args, **env)
    workers.append(w)
    return w


def insert_jobs(url: str, profile: str, inputs: list[dict[str, Any]]) -> list[str]:
    """One INSERT statement for many jobs (the API's batch path: one NOTIFY per profile)."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "INSERT INTO ai_jobs (id, owner_service, task_type, model_profile, input)"
            " SELECT gen_random_uuid(), 'e2e', 'test', %s, i"
            " FROM unnest(%s::jsonb[]) AS i RETURNING id",
            (profile, [psycopg.types.json.Jsonb(i) for i in inputs]),
        ).fetchall()
    return [str(r[0]) for r in rows]


def counts(url: str) -> dict[str, int]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT status, count(*) FROM ai_jobs GROUP BY status").fetchall()
    return {s: n for s, n in rows}


def job(url: str, job_id: str) -> dict[str, Any]:
    with psycopg.connect(url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        row = conn.execute("SELECT * FROM ai_jobs WHERE id = %s", (job_id,)).fetchone()
    assert row is not None
    return row


def test_three_processes_complete_5000_jobs_on_two_profiles_exactly_once(
    db_url: str, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    procs = [start(workers, db_url, tmp_path, f"w{i}", WORKER_CLAIM_LIMIT="25") for i in range(3)]
    for w in procs:
        w.wait_ready()
    ids: list[str] = []
    for _ in range(5):  # jobs keep arriving while the workers run
        ids += insert_jobs(db_url, A, [{} for _ in range(500)])
        ids += insert_jobs(db_url, B, [{} for _ in range(500)])
    wait_for(lambda: counts(db_url).get("completed") == 5000, timeout=120, what="5000 jobs")
    for w in procs:
        w.signal(signal.SIGTERM)
    assert [w.wait_exit() for w in procs] == [0, 0, 0]

    calls = read_invocations(procs[0].invocations)
    per_job = Counter(job_id for job_id, _, _ in calls)
    assert len(calls) == 5000, f"{len(calls) - len(per_job)} duplicate invocations"
    assert set(per_job) == set(ids)
    assert {attempt for _, attempt, _ in calls} == {1}
    assert counts(db_url) == {"completed": 5000}
    assert len({pid for _, _, pid in calls}) >= 2  # the work was shared
    with psycopg.connect(db_url, autocommit=True) as conn:
        owners = conn.execute("SELECT DISTINCT split_part(worker_id, '/', 1) FROM ai_jobs")
        assert {r[0] for r in owners} <= {"w0", "w1", "w2"}


def test_kill_9_mid_job_the_job_completes_elsewhere_after_the_lease(
    db_url: str, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    procs = [
        # 5 s: the victim must hold the lease until it is killed, even on a stalled machine
        start(workers, db_url, tmp_path, name, WORKER_LEASE_TIMEOUT="5s")
        for name in ("a", "b")
    ]
    for w in procs:
        w.wait_ready()
    [job_id] = insert_jobs(db_url, A, [{"block_on_attempts": [1]}])
    first = wait_for(
        lambda: read_invocations(procs[0].invocations), what="the job to start somewhere"
    )
    [(_, _, pid)] = first
    victim = next(w for w in procs if w.proc.pid == pid)
    survivor = next(w for w in procs if w is not victim)
    victim.proc.send_signal(signal.SIGKILL)
    victim.wait_exit()

    done = wait_for(
        lambda: (row := job(db_url, job_id))["status"] == "completed" and row,
        what="the job to complete on the surviving worker",
    )
    assert done["attempts"] == 2
    assert done["worker_id"].startswith(f"{survivor.name}/")
    calls = read_invocations(procs[0].invocations)
    assert [(a, p) for _, a, p in calls] == [(1, victim.proc.pid), (2, survivor.proc.pid)]


def test_sigterm_lets_in_flight_jobs_finish_and_exits_0(
    db_url: str, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    # An hour of grace: the jobs finish whenever the machine gets to them, and the worker
    # must exit once they have, not wait the grace out.
    go = tmp_path / "go"
    w = start(workers, db_url, tmp_path, "t", WORKER_SHUTDOWN_GRACE="1h").wait_ready()
    finishing = [
        *insert_jobs(db_url, A, [{"wait_for_file": str(go)}]),
        *insert_jobs(db_url, B, [{"wait_for_file": str(go)}]),
    ]
    wait_for(lambda: len(read_invocations(w.invocations)) == 2, what="both jobs to start")
    w.signal(signal.SIGTERM)
    wait_for(lambda: w.status()["state"] == "draining", what="draining")
    go.touch()
    assert w.wait_exit() == 0, w.log()
    assert [job(db_url, j)["status"] for j in finishing] == ["completed", "completed"]
    assert counts(db_url) == {"completed": 2}  # nothing left with a dead owner


def test_sigterm_releases_jobs_unfinished_at_the_end_of_the_grace_and_exits_0(
    db_url: str, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    w = start(workers, db_url, tmp_path, "t", WORKER_SHUTDOWN_GRACE="1s").wait_ready()
    [stuck] = insert_jobs(db_url, B, [{"block_on_attempts": [1]}])  # never finishes
    wait_for(lambda: read_invocations(w.invocations), what="the job to start")
    w.signal(signal.SIGTERM)
    assert w.wait_exit() == 0, w.log()
    released = job(db_url, stuck)
    assert (released["status"], released["attempts"], released["worker_id"]) == (
        "pending",
        0,
        None,
    )
    assert counts(db_url).get("running") is None  # nothing left with a dead owner


def test_a_second_signal_exits_at_once_and_releases_what_it_can(
    db_url: str, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    w = start(workers, db_url, tmp_path, "t", WORKER_SHUTDOWN_GRACE="1h").wait_ready()
    [stuck] = insert_jobs(db_url, A, [{"block_on_attempts": [1]}])
    wait_for(lambda: read_invocations(w.invocations), what="the job to start")
    w.signal(signal.SIGTERM)
    wait_for(lambda: w.status()["state"] == "draining", what="draining")
    w.signal(signal.SIGTERM)
    # long before the hour of grace; 128 + SIGTERM, as a shell reports a process it killed
    assert w.wait_exit(timeout=60) == 128 + signal.SIGTERM, w.log()
    assert "Traceback" not in w.log(), w.log()
    released = job(db_url, stuck)
    assert (released["status"], released["attempts"]) == ("pending", 0), w.log()


def test_postgresql_restart_under_load_loses_and_duplicates_nothing(
    tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    # Not under pytest's tmp_path: another pytest session on this machine resets that tree to
    # mode 0700, which locks out the server's system user when the tests run as root.
    data = tempfile.TemporaryDirectory(prefix="aisvc-restart-")
    server = EmbeddedPostgres(Path(data.name) / "pg", settings=FAST_SETTINGS)
    url = server.start()
    stop_inserting = threading.Event()  # a failing test must not leave the inserter retrying
    try:
        migrate(url)
        # A lease longer than any outage this test can make: the outage lasts as long as its
        # probes and failed stores take (20 s on a loaded CI host once), and a lease that ran
        # out meanwhile would have the held jobs reaped and run twice, which is right then.
        procs = [
            start(workers, url, tmp_path, f"r{i}", WORKER_LEASE_TIMEOUT="10m") for i in range(2)
        ]
        for w in procs:
            w.wait_ready()

        total, inserted = 400, []
        enough_before_restart = threading.Event()

        def keep_inserting() -> None:
            # one job per statement, retried across the outage with an idempotency key
            conn: psycopg.Connection[Any] | None = None
            for n in range(total):
                while True:
                    try:
                        if conn is None or conn.closed:
                            conn = psycopg.connect(url, autocommit=True, connect_timeout=2)
                        conn.execute(
                            "INSERT INTO ai_jobs (id, owner_service, task_type, model_profile,"
                            " idempotency_key) VALUES (gen_random_uuid(), 'e2e', 'test', %s, %s)"
                            " ON CONFLICT DO NOTHING",
                            ((A, B)[n % 2], f"k{n}"),
                        )
                        break
                    except psycopg.OperationalError:
                        conn = None
                        if stop_inserting.wait(0.02):  # pace the retries; give up if told
                            return
                inserted.append(n)
                if n == total // 3:
                    enough_before_restart.set()
            if conn is not None:
                conn.close()

        inserter = threading.Thread(target=keep_inserting, daemon=True)
        inserter.start()
        assert enough_before_restart.wait(60)
        # Two jobs surely in flight across the outage, finishing while PostgreSQL is down:
        # their results must be stored once it is back, each run once (not left to luck).
        release = tmp_path / "release-held"
        held = [insert_jobs(url, p, [{"wait_for_file": str(release)}])[0] for p in (A, B)]
        wait_for(
            lambda: set(held) <= {j for j, _, _ in read_invocations(procs[0].invocations)},
            what="the held jobs to run",
        )
        server.stop()
        wait_for(
            lambda: all(w.status()["listener"]["state"] == "disconnected" for w in procs),
            what="the workers to notice the outage",
        )
        for w in procs:  # visibly degraded: a probe takes them out of rotation
            ready = httpx.get(f"{w.url}/readyz", timeout=60)
            assert ready.status_code == 503, ready.text
            assert ready.json()["listener"] == "disconnected"
            assert ready.json()["database"] == "unavailable"
            assert ready.json()["error"] == "not_ready"
            assert "LISTEN connection is down" in ready.json()["detail"]
        release.touch()  # the held jobs finish now, with nowhere to store their results yet
        holders = {pid for j, _, pid in read_invocations(procs[0].invocations) if j in held}
        for w in (w for w in procs if w.proc.pid in holders):
            wait_for(lambda w=w: w.status()["pending_completions"] >= 1, what="results queued")
            failed = w.log().count("results failed, will retry")
            # two more failed stores: the second surely began after the held results queued
            wait_for(
                lambda w=w, n=failed: w.log().count("results failed, will retry") >= n + 2,
                what=f"{w.name} to fail storing the held results",
            )
        server.start()
        for w in procs:
            wait_for(partial(http_ok, f"{w.url}/readyz"), what=f"{w.name} ready again")
        inserter.join(120)
        assert len(inserted) == total
        wait_for(
            lambda: counts(url).get("completed") == total + len(held),
            timeout=120,
            what="every job to complete",
        )
        assert [(job(url, j)["status"], job(url, j)["attempts"]) for j in held] == [
            ("completed", 1)
        ] * 2
        listeners = [w.status()["listener"] for w in procs]
        assert [(x["state"], x["reconnects"] >= 1) for x in listeners] == [("connected", True)] * 2
        for w in procs:
            w.signal(signal.SIGTERM)
        assert [w.wait_exit() for w in procs] == [0, 0]
        calls = read_invocations(procs[0].invocations)
        per_job = Counter(job_id for job_id, _, _ in calls)
        assert len(per_job) == total + len(held)
        assert [j for j, n in per_job.items() if n > 1] == []
    finally:
        stop_inserting.set()
        for w in workers:
            w.kill()
        server.close()
        data.cleanup()
