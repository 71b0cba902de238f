"""Bounding the names clients send before anything uses them.

A name is looked up in dictionaries, quoted in error messages and written to logs. Unbounded, a
100 KB model name turned its NOT_FOUND into "Stream removed" (the message no longer fits the
HTTP/2 trailer) and a 4 MB one wrote a 4 MB log line. Model names are directory names, which file
systems cap at 255 bytes, so 256 characters refuses no real model.
"""

from __future__ import annotations

from sodd.errors import InvalidArgument

NAME_LIMIT = 256


def name_problem(value: str, field: str, limit: int = NAME_LIMIT) -> str | None:
    """What is wrong with a name, naming `field`; None when nothing is."""
    if len(value) > limit:
        return f"{field}: {len(value)} characters, more than the {limit} a name may have"
    return None


def check_name(value: str, field: str, limit: int = NAME_LIMIT) -> str:
    """`value` if it is at most `limit` characters long; otherwise InvalidArgument naming `field`.

    Callers that answer with `context.abort` should abort after the `except` block, not inside
    it: an `except ... as exc` frame that raises again keeps itself, and the request in it, alive
    through the traceback until a full garbage collection (16 MB per 8 MB name in a daemon)."""
    problem = name_problem(value, field, limit)
    if problem is not None:
        raise InvalidArgument(problem)
    return value
