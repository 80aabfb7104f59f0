"""The supervisor's shutdown order and exit codes.

Stages: in ``ai-service dev`` the worker drains its jobs against the simulator, so the
simulator (and the API) must keep serving until the worker has finished. A second signal
exits at once with 128 + the signal's number.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import anyio

from service.runtime import Service, supervise


class Recorder:
    def __init__(self) -> None:
        self.events: list[str] = []


def service(
    name: str, stage: int, rec: Recorder, drained: anyio.Event | None = None
) -> tuple[Service, anyio.Event]:
    stopped = anyio.Event()

    async def run() -> None:
        await stopped.wait()
        if drained is not None:
            await drained.wait()  # a worker finishing its last jobs
        rec.events.append(f"{name} finished")

    def stop() -> None:
        rec.events.append(f"{name} asked to stop")
        stopped.set()

    return Service(name, run, stop, stage=stage), stopped


async def test_later_stages_stop_only_after_earlier_ones_finished() -> None:
    rec = Recorder()
    drained = anyio.Event()
    worker, worker_asked = service("worker", 0, rec, drained)
    services = [service("simulator", 1, rec)[0], worker, service("api", 1, rec)[0]]
    crash = anyio.Event()

    async def dies() -> None:
        await crash.wait()
        rec.events.append("crasher finished")

    services.append(Service("crasher", dies, lambda: None, stage=2))
    async with anyio.create_task_group() as tg:
        result: list[int] = []

        async def sup() -> None:
            result.append(await supervise(services))

        tg.start_soon(sup)
        crash.set()  # one service ends on its own: everything is stopped, in stages
        with anyio.fail_after(30):
            await worker_asked.wait()
        assert "simulator asked to stop" not in rec.events  # the worker is still draining
        assert "api asked to stop" not in rec.events
        drained.set()
    assert rec.events.index("worker finished") < rec.events.index("simulator asked to stop")
    assert rec.events.index("worker finished") < rec.events.index("api asked to stop")
    assert result == [1]  # a service stopped unexpectedly


def test_a_second_signal_exits_at_once_with_128_plus_the_signal() -> None:
    script = textwrap.dedent(
        """
        import logging, sys, anyio
        from service.runtime import Service, supervise
        logging.basicConfig(stream=sys.stderr, level=logging.INFO)
        async def forever() -> None:
            # services start after the signal watcher has installed its handlers (FIFO)
            print("ready", flush=True)
            await anyio.sleep_forever()
        sys.exit(anyio.run(supervise, [Service("stuck", forever, lambda: None)]))
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        assert "shutting down gracefully" in proc.stderr.readline()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_a_server_whose_start_up_fails_is_a_failed_service_not_a_process_exit() -> None:
    """uvicorn calls ``sys.exit`` when the app's start-up fails; let through, the
    ``SystemExit`` tore through the event loop (whose shutdown could then hang on other
    tasks). The supervisor sees a failed service and stops the others: exit code 1."""
    from service.runtime import http_service
    from service.serve import StartupFailed, make_server

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        assert scope["type"] == "lifespan"
        raise RuntimeError("start-up failed")

    server = make_server(app, "127.0.0.1", 0)
    server.listen("test")
    try:
        await server.serve()
    except StartupFailed:
        pass
    else:
        raise AssertionError("serve() returned")
    rec = Recorder()
    other, _ = service("worker", 0, rec)
    failing = make_server(app, "127.0.0.1", 0)
    failing.listen("test")
    with anyio.fail_after(30):
        assert await supervise([http_service("api", failing), other]) == 1
    assert rec.events == ["worker asked to stop", "worker finished"]


def test_servers_bind_what_the_host_names_as_uvicorn_would() -> None:
    """``listen_all`` binds before uvicorn starts (a taken port: one line, exit 2), so it
    must bind what uvicorn would have: every address of a name, IPv6 alone for an IPv6
    address (asyncio sets IPV6_V6ONLY), and say which setting a failure comes from."""
    import socket

    import pytest

    from service.config import ConfigError
    from service.serve import listen_all

    names = {info[4][0] for info in socket.getaddrinfo("localhost", 0, type=socket.SOCK_STREAM)}
    local = listen_all("localhost", 0, "HTTP_HOST")
    try:
        assert {s.getsockname()[0] for s in local} == names
    finally:
        for s in local:
            s.close()
    if socket.has_ipv6:
        try:
            [v6] = listen_all("::1", 0, "HTTP_HOST")
        except ConfigError:  # no IPv6 loopback on this machine
            pass
        else:
            with v6:
                assert v6.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    with pytest.raises(ConfigError, match=r"no-such-host\.invalid:0 \(HTTP_HOST\)"):
        listen_all("no-such-host.invalid", 0, "HTTP_HOST")
    [taken] = listen_all("127.0.0.1", 0, "HTTP_PORT")
    with taken, pytest.raises(ConfigError, match=r"\(HTTP_PORT\): Address already in use"):
        listen_all("127.0.0.1", taken.getsockname()[1], "HTTP_PORT")
