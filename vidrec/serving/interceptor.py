"""The one shape of vidrec's server interceptors: wrap each unary-unary handler.

Admission, the error guard, metrics, tracing and the gateway's authentication each only
say how to wrap a call (`wrap`); the gRPC plumbing around it lives here once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

Handler = Callable[[Any, grpc.ServicerContext], Any]


class UnaryInterceptor(grpc.ServerInterceptor):
    # Methods left unwrapped, by prefix (health checks for admission and authentication).
    skip_prefixes: tuple[str, ...] = ()

    def wrap(self, inner: Handler, method: str,
             details: grpc.HandlerCallDetails) -> Handler:
        raise NotImplementedError

    def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails
                          ) -> grpc.RpcMethodHandler:
        handler = continuation(details)
        if (handler is None or handler.unary_unary is None
                or (self.skip_prefixes and details.method.startswith(self.skip_prefixes))):
            return handler
        return grpc.unary_unary_rpc_method_handler(
            self.wrap(handler.unary_unary, details.method, details),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)
