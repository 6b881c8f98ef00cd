"""
devpi's JSON envelope and error pages.
"""

from __future__ import annotations

import html
import json
from http import HTTPStatus

from twisted.web.iweb import IRequest

from .negotiation import wants_json_error


def dump_json(data: object, *, compact: bool = False) -> bytes:
    """
    JSON as devpi sends it: indented by 2, ending in a newline; or, for
    answers that grow with the state (an index's projects, a project's
    versions), compact, which Python encodes in C (indenting makes it use
    its pure-Python encoder, ten times slower).
    """
    if compact:
        return (json.dumps(data, separators=(",", ":")) + "\n").encode("utf-8")
    return (json.dumps(data, indent=2, sort_keys=False) + "\n").encode("utf-8")


def send_json(request: IRequest, body: bytes, status: int = 200) -> bytes:
    """
    Set the status and headers of a JSON answer made already (C{body}).
    """
    request.setResponseCode(status)
    request.setHeader("Content-Type", "application/json")
    request.setHeader("Content-Length", str(len(body)))
    return body


def envelope(
    request: IRequest,
    status: int = 200,
    *,
    type: str | None = None,
    result: object = None,
    message: str | None = None,
) -> bytes:
    """
    Set the status and return the C{{"type", "result", "message"}} body.
    """
    request.setResponseCode(status)
    request.setHeader("Content-Type", "application/json")
    body: dict = {}
    if type is not None:
        body["type"] = type
        body["result"] = result
    if message is not None:
        body["message"] = message
    data = dump_json(body)
    request.setHeader("Content-Length", str(len(data)))
    return data


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def error(
    request: IRequest,
    status: int,
    message: str,
    *,
    reason_is_message: bool = False,
    as_json: bool = False,
) -> bytes:
    """
    An error answer: the JSON envelope for clients that accept JSON, a
    small HTML page for the rest.

    @param reason_is_message: put the message into the HTTP reason phrase
        too, which twine and setuptools print.
    @param as_json: the JSON envelope whatever the client accepts.
    """
    reason = message if reason_is_message else _reason(status)
    # A reason phrase must be one line of latin-1 text.
    reason = (reason.splitlines() or [_reason(status)])[0]
    if as_json or wants_json_error(request):
        body = envelope(request, status, message=message)
    else:
        request.setHeader("Content-Type", "text/html; charset=utf-8")
        title = html.escape(f"{status} {_reason(status)}")
        body = (
            "<!DOCTYPE html>\n<html><head><title>devpi-tx - "
            f"{title}</title></head>\n<body><h1>{title}</h1>\n"
            f"<p>{html.escape(message)}</p></body></html>\n"
        ).encode()
        request.setHeader("Content-Length", str(len(body)))
    request.setResponseCode(status, reason.encode("latin-1", "replace"))
    return body
