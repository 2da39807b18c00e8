"""Who failed, and what follows: the attribution rules of the router, pure.

Every way an attempt can end without an answer for the client is one `FailureKind`, and each kind names its side:

    kind          caused by                                   ejects the upstream           client sees at the end
    UNREACHABLE   connect error, reset, empty answer           at once                       502
    TIMEOUT       the upstream's connect or between-bytes     at once                       504
    SERVER_ERROR  HTTP 5xx                                     after 3 in a row              502
    AUTH          HTTP 401/403: the router's key for it        at once, log names the key    502
    RATE_LIMITED  HTTP 429: a provider's quota                never (try the next one)      429
    DEADLINE      the request's own overall deadline          never (not the upstream's)    504

A client that hangs up is not a failure of anything and never reaches this table (`Relayed.client_gone`). 4xx answers
other than 401/403/429 are the request's own fault (400, 404, 413, 422) and are passed through unchanged.
"""

from __future__ import annotations

from enum import Enum


class FailureKind(str, Enum):
    UNREACHABLE = "unreachable"
    TIMEOUT = "timeout"
    SERVER_ERROR = "server_error"
    AUTH = "auth"
    RATE_LIMITED = "rate_limited"
    DEADLINE = "deadline"


#: consecutive failures of a kind before the upstream is ejected; absent: never ejects. One odd request must not
#: eject every endpoint in turn, so 5xx needs a run (Envoy's outlier detection does the same).
EJECT_AFTER = {
    FailureKind.UNREACHABLE: 1,
    FailureKind.TIMEOUT: 1,
    FailureKind.SERVER_ERROR: 3,
    FailureKind.AUTH: 1,
}

#: (HTTP status, OpenAI error code) for the client when every attempt failed and the last failure was of this kind
CLIENT_ERROR = {
    FailureKind.UNREACHABLE: (502, "upstream_error"),
    FailureKind.TIMEOUT: (504, "upstream_timeout"),
    FailureKind.SERVER_ERROR: (502, "upstream_error"),
    FailureKind.AUTH: (502, "upstream_error"),
    FailureKind.RATE_LIMITED: (429, "rate_limit_exceeded"),
    FailureKind.DEADLINE: (504, "deadline_exceeded"),
}


def classify_status(status: int) -> FailureKind | None:
    """The failure an upstream's HTTP status stands for; None when the answer goes to the client as it is."""
    if status >= 500:
        return FailureKind.SERVER_ERROR
    if status in (401, 403):
        return FailureKind.AUTH
    if status == 429:
        return FailureKind.RATE_LIMITED
    return None


class UpstreamFailure(Exception):
    """One attempt failed before a byte reached the client, so the request may go elsewhere.

    The message is the router's own description (endpoint id, status, OS error): never the upstream's body, which
    for an auth error can carry a (masked) key and for a 5xx a stack trace."""

    def __init__(self, message: str, kind: FailureKind, http_status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.http_status = http_status
