"""The shape every server interceptor here shares: each known method's handler wrapped once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc


class MethodWrapper(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """Wraps the handler of each method once, the first time it is called.

    The services are fixed once the server starts, so a wrapped handler is kept per method;
    unknown method names (chosen by the caller) are passed through and never remembered.
    """

    def __init__(self) -> None:
        self._wrapped: dict[str, Any] = {}

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        wrapped = self._wrapped.get(details.method)
        if wrapped is None:
            handler = continuation(details)
            if handler is None:
                return None
            wrapped = self._wrapped[details.method] = self.wrap(handler, details.method)
        return wrapped

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> Any:  # type: ignore[type-arg]
        """The handler to serve `method` with instead of `handler`."""
        raise NotImplementedError


class WrapperChain(MethodWrapper):
    """Several wrappers as one interceptor: each method's handler is wrapped by all of them once.

    grpc runs every interceptor of a server on every call, each behind a continuation of its
    own; as one, the call meets a single method lookup. `wrappers` go outermost first.
    """

    def __init__(self, *wrappers: MethodWrapper) -> None:
        super().__init__()
        self._wrappers = wrappers

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> Any:  # type: ignore[type-arg]
        for wrapper in reversed(self._wrappers):
            handler = wrapper.wrap(handler, method)
        return handler
