"""``ai-service simulate-provider`` as a process: SIGTERM stops it gracefully with exit 0, as the
service's own commands (uvicorn's ``run()`` re-raised the signal after its clean shutdown, so
it exited 143), and a port already taken or a bad option is one line and exit 2."""

from __future__ import annotations

import signal
import subprocess
import sys

from tests.helpers import free_port, http_ok, reaped, wait_for


def _start(port: int) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "service", "simulate-provider", "--port", str(port)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_sigterm_stops_the_simulator_with_exit_0_and_a_taken_port_is_one_line() -> None:
    port = free_port()
    with reaped(_start(port)) as proc:
        wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/v1/models", proc), what="the simulator")
        second = _start(port)
        out, _ = second.communicate(timeout=60)
        assert second.returncode == 2, out  # a bad setting, as every command's
        assert "cannot listen on 127.0.0.1" in out and "Traceback" not in out, out
        assert "simulated inference server" not in out, out  # never said it was up
        bad = [sys.executable, "-m", "service", "simulate-provider", "--fail-rate", "2"]
        done = subprocess.run(bad, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip() == "simulate-provider: fail_rate must be between 0 and 1"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "received SIGTERM: shutting down gracefully" in out
