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
    """The request itself is wrong (a field, an image, a limit it can never fit); the message names the field."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(SoddError):
    """No such model or version is served."""

    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(SoddError):
    """The request is fine but cannot run here now: a device that is unavailable, a model that cannot load."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(SoddError):
    """Full for now (a model's queue, a call budget): a retry later can succeed."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(SoddError):
    """The caller's deadline passed before the answer was ready."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unavailable(SoddError):
    """The daemon is stopping: another instance can answer."""

    code = grpc.StatusCode.UNAVAILABLE


class ModelDirError(SoddError):
    """A model directory that cannot be served; the message names the file and what is wrong."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class PermissionDenied(SoddError):
    """The caller's token does not allow this model or this call."""

    code = grpc.StatusCode.PERMISSION_DENIED
