"""Errors raised by the Mender API client (STYLE.md practice 4: the outside world's family).

Every error quotes what the server said: its ``error`` text and its ``request_id`` (or the
``X-MEN-RequestID`` header), so an operator can find the request in the server's logs
(shared/mender/server-behaviour.md section 0, "Error body" and "Request ID"). No error carries a
token, key or passphrase: callers pass paths and names only.
"""

from __future__ import annotations

from gapferry.common.errors import EnvironmentFailure, InvalidData

__all__ = [
    "ArtifactMismatch",
    "MenderAuthRejected",
    "MenderConflict",
    "MenderError",
    "MenderLinkRefused",
    "MenderNotFound",
    "MenderUnauthorized",
    "MenderUnavailable",
]


class MenderError(EnvironmentFailure):
    """The Mender Server answered with an error, or could not be reached.

    Attributes: `status` (HTTP status, 0 when no answer), `server_error` (the body's ``error``),
    `request_id`, `method` and `path` of the request.
    """

    code = "mender-error"

    def __init__(
        self,
        message: str,
        *,
        remedy: str,
        status: int = 0,
        server_error: str | None = None,
        request_id: str | None = None,
        method: str = "",
        path: str = "",
        code: str | None = None,
    ) -> None:
        detail = message
        if server_error:
            detail += f"; server said: {server_error!r}"
        if request_id:
            detail += f" (request_id {request_id})"
        super().__init__(detail, remedy=remedy, code=code)
        self.status = status
        self.server_error = server_error
        self.request_id = request_id
        self.method = method
        self.path = path


class MenderUnavailable(MenderError):
    """No usable answer after the retries: connection errors, 5xx, 429."""

    code = "mender-unavailable"


class MenderUnauthorized(MenderError):
    """401: the management token is wrong or expired, or the device token was refused twice."""

    code = "mender-unauthorized"


class MenderAuthRejected(MenderError):
    """The device authentication request was refused (device not preauthorized/accepted)."""

    code = "mender-auth-rejected"


class MenderConflict(MenderError):
    """409: e.g. conflicting /next data, an aborted deployment, an existing artifact."""

    code = "mender-conflict"


class MenderNotFound(MenderError):
    """404."""

    code = "mender-not-found"


class MenderLinkRefused(MenderError):
    """A download link points somewhere the client was not allowed to go."""

    code = "mender-link-refused"


class ArtifactMismatch(InvalidData):
    """A downloaded artifact does not have the announced length."""

    code = "artifact-mismatch"
