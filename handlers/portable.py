"""Errors that cross a process boundary intact.

A model worker process sends each job's outcome back to the bot, exceptions included.
Pickle rebuilds an exception by calling its class with ``args``, which breaks for errors
whose constructor takes other arguments than their message (``InvalidInput(option,
message)``); these are rebuilt from their message and attributes instead.
"""

from __future__ import annotations

from typing import Any


def rebuild_error(cls: type[BaseException], message: str, state: dict[str, Any]) -> BaseException:
    error = cls.__new__(cls)
    BaseException.__init__(error, message)
    error.__dict__.update(state)
    return error


class PortableError(Exception):
    """Base for errors a worker process may send to the bot."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (rebuild_error, (type(self), str(self), dict(self.__dict__)))
