"""The canonical JSON text of a value: what storage keeps and what fingerprints are taken over."""

from __future__ import annotations

import json
from typing import Any

# A JSON value: None, bool, int, float, str, or lists and string-keyed dicts of these.
Json = Any


def dump_json(value: Json) -> str:
    """Canonical JSON text: compact, keys in their given order, no NaN/Infinity."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
