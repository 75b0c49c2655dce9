"""The one exception type users see: a clear one-line message, no traceback."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError

Config = TypeVar("Config", bound=BaseModel)


class LLMPruneError(Exception):
    """A problem with the user's input or environment, reported as one line by the CLI."""


def validated(cls: type[Config], values: dict, where: str = "") -> Config:
    """`cls(**values)`, or an LLMPruneError of one line naming the field and `where`."""
    try:
        return cls(**values)
    except ValidationError as exc:
        message = one_line(exc)
        raise LLMPruneError(f"{where}: {message}" if where else message) from None


def one_line(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error.get("loc", ()) if part != "__root__")
    message = error.get("msg", "invalid value").removeprefix("Value error, ")
    if where == "method" and message.startswith("unknown method"):
        return message
    if message.startswith(f"{where}: ") or message.startswith("structured: "):
        return message  # the validator's message already names what it is about
    return f"{where}: {message}" if where else message
