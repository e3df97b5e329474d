"""The load generators' own ceiling: each driven against an Envoy that answers every request itself
(a ``direct_response`` route, one Envoy thread), so nothing of Orchestra is in the path. What a
generator reaches here is at least what it can offer the real stack on the same two cores."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from bench.load import Result, run_h2load_grpc, run_wrk, wrk_script
from bench.stack import free_port
from orchestra_server.edge import find_envoy

CONFIG = """
static_resources:
  listeners:
  - name: echo
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.\
HttpConnectionManager"
          stat_prefix: echo
          codec_type: AUTO
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/orchestra.v1." }}
                direct_response: {{ status: 200, body: {{ inline_bytes: "AAAAAAA=" }} }}
                response_headers_to_add:
                - header: {{ key: content-type, value: application/grpc }}
                - header: {{ key: grpc-status, value: "0" }}
              - match: {{ prefix: "/" }}
                direct_response: {{ status: 200, body: {{ inline_string: '{{"status":"ok"}}' }} }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"""


def measure(workdir: Path, duration: float, concurrency: int) -> dict[str, Any]:
    """wrk, h2load and the grpc.aio generator against a do-nothing Envoy."""
    from bench.grpcload import run_grpc_python

    port = free_port()
    config = workdir / "ceiling-envoy.yaml"
    config.write_text(CONFIG.format(port=port))
    log = (workdir / "ceiling-envoy.log").open("wb")
    envoy = subprocess.Popen(
        [
            str(find_envoy()),
            "-c",
            str(config),
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "--log-level",
            "error",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    results: list[Result] = []
    try:
        deadline = time.monotonic() + 15
        import socket

        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        url = f"http://127.0.0.1:{port}"
        results.append(
            run_wrk(
                "generator:wrk",
                url,
                wrk_script("static", workdir),
                ["GET", "/", "-"],
                duration=duration,
                connections=concurrency,
            )
        )
        results.append(
            run_h2load_grpc(
                "generator:h2load",
                [f"127.0.0.1:{port}"],
                "/orchestra.v1.Echo/Ping",
                b"",
                None,
                duration=duration,
                concurrency=concurrency,
                workdir=workdir,
            )
        )
        results.append(
            run_grpc_python(
                "generator:grpc.aio",
                "ping",
                [f"127.0.0.1:{port}"],
                "unused",
                duration=duration,
                ping_path="/orchestra.v1.Echo/Ping",
            )
        )
    finally:
        envoy.terminate()
        envoy.wait(10)
        log.close()
    return {"results": [r.as_dict() for r in results]}
