"""The external load generators (wrk for REST, h2load for gRPC): found, or installed when possible."""

from __future__ import annotations

import os
import shutil
import subprocess

REQUIRED = {"wrk": "wrk", "h2load": "nghttp2-client"}


class ToolMissing(RuntimeError):
    pass


def ensure_tools() -> dict[str, str]:
    """Paths of wrk and h2load; installs the Debian packages when missing and running as root."""
    missing = [pkg for tool, pkg in REQUIRED.items() if shutil.which(tool) is None]
    if missing:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise ToolMissing(
                f"missing load generators; install them with: apt-get install -y {' '.join(missing)}"
            )
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", *missing], check=True, env=env, capture_output=True
        )
    found = {tool: shutil.which(tool) for tool in REQUIRED}
    if None in found.values():
        raise ToolMissing(f"could not install {missing}")
    return {tool: str(path) for tool, path in found.items()}


def versions() -> dict[str, str]:
    out: dict[str, str] = {}
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    out["wrk"] = (wrk.stdout + wrk.stderr).strip().splitlines()[0] if (wrk.stdout + wrk.stderr) else "?"
    h2 = subprocess.run(["h2load", "--version"], capture_output=True, text=True, check=False)
    out["h2load"] = h2.stdout.strip().splitlines()[0] if h2.stdout else "?"
    return out
