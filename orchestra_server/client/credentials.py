"""Client-credentials access tokens for the remote clients: fetched once, refreshed before they expire."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from urllib.parse import urlencode

# Refresh this long before expiry, so a token never expires in flight.
REFRESH_MARGIN_SECONDS = 60.0


def token_request_body(client_id: str, client_secret: str) -> bytes:
    return urlencode(
        {"grant_type": "client_credentials", "client_id": client_id, "client_secret": client_secret}
    ).encode()


class TokenCache:
    """Holds the current access token; `fetch` returns (token, expires_in seconds)."""

    def __init__(
        self,
        fetch: Callable[[], tuple[str, int]],
        *,
        clock: Callable[[], float] = time.monotonic,
        refresh_margin: float = REFRESH_MARGIN_SECONDS,
    ) -> None:
        self._fetch = fetch
        self._clock = clock
        self._margin = refresh_margin
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_at = 0.0

    def token(self) -> str:
        with self._lock:
            now = self._clock()
            if self._token is None or now >= self._expires_at - min(self._margin, self._lifetime / 2):
                token, expires_in = self._fetch()
                self._token, self._expires_at, self._lifetime = token, now + expires_in, float(expires_in)
            return self._token

    _lifetime = 0.0

    def invalidate(self, token: str) -> None:
        """Forgets `token` (the server refused it) so the next call fetches a new one."""
        with self._lock:
            if self._token == token:
                self._token = None
