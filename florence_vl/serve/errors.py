"""The one error shape every endpoint answers with: {"error": {"message", "type", "code"}} (OpenAI's)."""

from __future__ import annotations

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 405: "invalid_request_error", 408: "timeout_error", 413: "request_too_large",
          429: "rate_limit_error", 501: "not_implemented", 503: "server_busy"}


class ApiError(Exception):
    """A client-facing failure: HTTP status, one-line message, a stable machine-readable code."""

    def __init__(self, status: int, message: str, code: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.status, self.message, self.code)


def error_body(status: int, message: str, code: str) -> dict:
    return {"error": {"message": message, "type": _TYPES.get(status, "server_error"), "code": code}}
