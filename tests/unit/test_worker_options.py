"""A worker serves with the thread count and grace period its settings name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestra_server import runtime
from orchestra_server.settings import Settings
from orchestra_server.transport.server import ServerOptions


class _App:
    def __init__(self) -> None:
        self.started = self.closed = False

    def start(self) -> None:
        self.started = True

    def server_dependencies(self) -> str:
        return "dependencies"

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("call_threads", [1, 4, 24])
def test_the_worker_runs_calls_on_the_threads_it_is_given(
    call_threads: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = _App()
    served: list[tuple[str, Any, ServerOptions]] = []
    monkeypatch.setattr(runtime, "build_application", lambda settings, scheduler: app)
    monkeypatch.setattr(
        runtime, "serve", lambda address, deps, options: served.append((address, deps, options))
    )
    settings = Settings(data_dir=tmp_path, call_threads=call_threads, grace_period=3.0)
    runtime.run_worker(settings, "127.0.0.1:0", scheduler=False)
    assert served == [
        ("127.0.0.1:0", "dependencies", ServerOptions(max_workers=call_threads, grace_seconds=3.0))
    ]
    assert app.started
    assert app.closed
