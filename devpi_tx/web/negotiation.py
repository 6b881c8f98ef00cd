"""
Choosing a representation from the C{Accept} header, as devpi-server does.
"""

from __future__ import annotations

import json

from twisted.web.iweb import IRequest

from ..model.errors import InvalidInput


def parse_accept(header: str) -> list[tuple[str, float]]:
    """
    Parse an C{Accept} header into (media type, quality) pairs, in the
    order given.  Malformed quality values count as 0.
    """
    result = []
    for part in header.split(","):
        fields = [f.strip() for f in part.split(";")]
        media = fields[0].lower()
        if not media:
            continue
        quality = 1.0
        for param in fields[1:]:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        result.append((media, quality))
    return result


def accept_header(request: IRequest) -> str:
    raw = request.getHeader("accept")
    return raw or ""


def wants_json(request: IRequest) -> bool:
    """
    Whether the client asked for C{application/json} at least as much as
    for HTML; devpi-client always sends exactly C{application/json}.
    """
    offers = dict(parse_accept(accept_header(request)))
    json_q = offers.get("application/json", 0.0)
    if json_q <= 0:
        return False
    return json_q >= offers.get("text/html", 0.0)


def has_flag(request: IRequest, name: str) -> bool:
    """
    Whether the query string holds C{name}, with or without a value
    (devpi's C{?force}, C{?no_projects}); Twisted's C{request.args} drops
    keys without C{=}.
    """
    _, _, query = request.uri.partition(b"?")
    wanted = name.encode("ascii")
    return any(item.split(b"=", 1)[0] == wanted for item in query.split(b"&"))


def read_json(request: IRequest) -> object:
    request.content.seek(0)
    raw = request.content.read()
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise InvalidInput("Bad request: could not decode json") from None
