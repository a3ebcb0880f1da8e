"""API errors in the shape Google APIs use, so the client libraries map them to exceptions."""

from __future__ import annotations

# google.rpc.Code name -> (numeric code, HTTP status), as in google/rpc/code.proto.
_CODES: dict[str, tuple[int, int]] = {
    "INVALID_ARGUMENT": (3, 400),
    "DEADLINE_EXCEEDED": (4, 504),
    "NOT_FOUND": (5, 404),
    "ALREADY_EXISTS": (6, 409),
    "RESOURCE_EXHAUSTED": (8, 429),
    "FAILED_PRECONDITION": (9, 400),
    "ABORTED": (10, 409),
    "UNIMPLEMENTED": (12, 501),
    "INTERNAL": (13, 500),
}


class ApiError(Exception):
    """An error answered as `{"error": {"code", "status", "message"}}`."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status
        self.message = message

    @property
    def http_status(self) -> int:
        return _CODES[self.status][1]

    @property
    def rpc_code(self) -> int:
        return _CODES[self.status][0]

    def body(self) -> dict:
        return {"error": {"code": self.http_status, "status": self.status, "message": self.message}}


def invalid_argument(message: str) -> ApiError:
    return ApiError("INVALID_ARGUMENT", message)


def not_found(message: str) -> ApiError:
    return ApiError("NOT_FOUND", message)


def already_exists(message: str) -> ApiError:
    return ApiError("ALREADY_EXISTS", message)


def failed_precondition(message: str) -> ApiError:
    return ApiError("FAILED_PRECONDITION", message)
