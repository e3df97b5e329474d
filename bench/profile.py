"""Where a worker's time goes: ``py-spy record`` on a live worker during a scenario, folded into
shares per layer and the hottest functions."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

# Layers, first match wins, by the file a frame is in.
LAYERS = (
    ("orchestra: engine", "orchestra_server/engine/"),
    ("orchestra: storage (repository)", "orchestra_server/storage/"),
    ("orchestra: service", "orchestra_server/service/"),
    ("orchestra: identity", "orchestra_server/identity/"),
    ("orchestra: observability", "orchestra_server/observability/"),
    ("orchestra: transport", "orchestra_server/transport/"),
    ("sqlalchemy", "sqlalchemy/"),
    ("sqlite3 driver", "sqlite3/"),
    ("psycopg driver", "psycopg"),
    ("logging", "logging/"),
    ("json", "json/"),
    ("jwt/crypto", "jwt/"),
    ("protobuf", "google/protobuf"),
    ("grpc", "grpc/"),
    ("cel", "cel"),
    ("orchestra: composition (bootstrap)", "orchestra_server/bootstrap.py"),
    ("prometheus_client", "prometheus_client/"),
    ("threading/queue", "threading.py"),
    ("threading/queue", "concurrent/futures/"),
    ("threading/queue", "queue.py"),
)


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def start(pid: int, seconds: float, out: Path, rate: int = 250) -> subprocess.Popen[bytes] | None:
    """Samples only the thread holding the GIL: where the worker's Python CPU time goes (time a
    thread spends waiting, for the database or a lock, is not in this view)."""
    binary = py_spy()
    if binary is None:
        return None
    return subprocess.Popen(
        [
            binary,
            "record",
            "-p",
            str(pid),
            "-d",
            str(max(1, round(seconds))),
            "-r",
            str(rate),
            "-f",
            "raw",
            "-o",
            str(out),
            "--nonblocking",
            "--gil",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


# Helpers whose time belongs to whoever called them.
GENERIC = (
    "contextlib.py",
    "weakref.py",
    "<string>",
    "functools.py",
    "enum.py",
    "typing.py",
    "abc.py",
    "_weakrefset.py",
    "copy.py",
    "dataclasses.py",
    "uuid.py",
    "datetime.py",
)


def _leaf_layer(frames: list[str]) -> str:
    """The layer the sample's time is spent in: the innermost frame that is not a generic helper."""
    for frame in reversed(frames):
        path = _frame_file(frame)
        if any(g in path for g in GENERIC):
            continue
        for layer, marker in LAYERS:
            if marker in path:
                return layer
        return "other: " + path.rsplit("/", 1)[-1]
    return "other"


def _frame_file(frame: str) -> str:
    # "function (path/to/file.py:123)"
    inside = frame.rpartition("(")[2]
    return inside.rsplit(":", 1)[0]


def _frame_name(frame: str) -> str:
    name, _, where = frame.rpartition(" (")
    path = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})"


def fold(raw: Path, top: int = 25) -> dict[str, Any]:
    """Shares of samples per layer (inclusive: a sample counts once for every layer on its stack),
    the hottest functions by self time and by inclusive time (orchestra_server only)."""
    total = 0
    layer_incl: Counter[str] = Counter()
    layer_excl: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    incl_orch: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        # grpc's polling thread mostly sits in the C core; keep it, it is real CPU.
        total += count
        seen_layers = set()
        seen_funcs = set()
        for frame in frames:
            path = _frame_file(frame)
            for layer, marker in LAYERS:
                if marker in path:
                    seen_layers.add(layer)
                    break
            if "orchestra_server/" in path:
                seen_funcs.add(_frame_name(frame))
        layer_excl[_leaf_layer(frames)] += count
        for layer in seen_layers:
            layer_incl[layer] += count
        for func in seen_funcs:
            incl_orch[func] += count
        self_time[_frame_name(frames[-1])] += count
    if not total:
        return {"samples": 0}

    def pct(c: int) -> float:
        return round(100 * c / total, 1)

    return {
        "samples": total,
        "layers_inclusive_pct": {k: pct(v) for k, v in layer_incl.most_common()},
        # Each sample counted once, for the layer its innermost non-helper frame is in.
        "layers_exclusive_pct": {k: pct(v) for k, v in layer_excl.most_common(14)},
        "self_top": [(k, pct(v)) for k, v in self_time.most_common(top)],
        "orchestra_inclusive_top": [(k, pct(v)) for k, v in incl_orch.most_common(top)],
    }
