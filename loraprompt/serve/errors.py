"""The one error type the API routes raise for bad input, answered as FastAPI answers its own
validation errors: `{"detail": [{"loc": ["body", field], "msg": ..., "type": ...}]}`."""

from __future__ import annotations

from typing import Any

Field = str | tuple[str, ...]  # the request field an error is about: a name, or a path into the body


class ServeError(Exception):
    """Bad input: an HTTP `status`, the request `field` it is about and a message for the client."""

    def __init__(self, status: int, field: Field | None, message: str, **ctx: Any) -> None:
        super().__init__(message)
        self.status = status
        self.field = (field,) if isinstance(field, str) else tuple(field or ())
        self.message = message
        self.ctx = ctx

    def detail(self) -> list[dict[str, Any]]:
        item: dict[str, Any] = {"loc": ["body", *self.field], "msg": self.message, "type": _TYPES.get(self.status, "error")}
        if self.ctx:
            item["ctx"] = self.ctx
        return [item]

    def __str__(self) -> str:
        where = ".".join(self.field)
        return f"{where}: {self.message}" if where else self.message


_TYPES = {422: "value_error", 403: "forbidden", 404: "not_found", 409: "conflict", 413: "too_large", 503: "busy"}


def invalid(field: str | tuple[str, ...], message: str, **ctx: Any) -> ServeError:
    """422 naming `field`."""
    return ServeError(422, field, message, **ctx)
