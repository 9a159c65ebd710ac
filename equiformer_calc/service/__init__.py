"""HTTP inference service (``equiformer-calc serve``) and its ASE client calculator.

The server side (``schema``, ``app``, ``batcher``, ``serve``) needs FastAPI and uvicorn and is imported only when
used; importing this package gives the client only.
"""

from .client import (
    AuthenticationError,
    RemoteCalculatorError,
    RemoteEquiformerCalculator,
    RemoteTimeoutError,
    RequestTooLargeError,
    ServerRejectedError,
    ServerUnavailableError,
)

__all__ = [
    "AuthenticationError",
    "RemoteCalculatorError",
    "RemoteEquiformerCalculator",
    "RemoteTimeoutError",
    "RequestTooLargeError",
    "ServerRejectedError",
    "ServerUnavailableError",
]
