"""The service's errors: JSON ``{"error", "error_type"}`` with a real status code."""

from __future__ import annotations


class ServiceError(Exception):
    """An answer other than success: status code, machine-readable type, one-line message."""

    def __init__(self, status: int, error_type: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = " ".join(str(message).split())
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": self.message, "error_type": self.error_type}
