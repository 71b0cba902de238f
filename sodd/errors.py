"""Errors that carry the gRPC status a client should see.

Code below the servicer raises these; the servicer turns them into `context.abort` calls, so no
module outside the server needs to know about gRPC.
"""

from __future__ import annotations

import grpc


class SoddError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(SoddError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(SoddError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(SoddError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(SoddError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(SoddError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unavailable(SoddError):
    code = grpc.StatusCode.UNAVAILABLE


class ModelDirError(SoddError):
    """A model directory that cannot be served; the message names the file and what is wrong."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class PermissionDenied(SoddError):
    code = grpc.StatusCode.PERMISSION_DENIED
