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


def wants_json_error(request: IRequest) -> bool:
    """
    Whether an error should be told in JSON: the client asked for JSON, or
    for a JSON form of the simple API (PEP 691) at least as much as for
    HTML.
    """
    if wants_json(request):
        return True
    offers = dict(parse_accept(accept_header(request)))
    json_q = max((q for media, q in offers.items() if media.endswith("+json")), default=0.0)
    html_q = max(offers.get("text/html", 0.0), offers.get("application/vnd.pypi.simple.v1+html", 0.0))
    return json_q > 0 and json_q >= html_q


def has_flag(request: IRequest, name: str) -> bool:
    """
    Whether the query string holds C{name}, with or without a value
    (devpi's C{?force}, C{?no_projects}); Twisted's C{request.args} drops
    keys without C{=}.
    """
    _, _, query = request.uri.partition(b"?")
    wanted = name.encode("ascii")
    return any(item.split(b"=", 1)[0] == wanted for item in query.split(b"&"))


#: How deeply a request's JSON may nest (devpi's bodies nest two or three
#: levels; tox results a few more).
MAX_JSON_DEPTH = 32


def _refuse_constant(name: str) -> object:
    raise InvalidInput(f"Bad request: {name} is not JSON")


def _unicode(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(
            "Bad request: JSON holds a lone surrogate (\\ud800-\\udfff), not Unicode"
        ) from None
    return text


def _depth(value: object) -> int:
    """
    How deeply C{value} nests lists and objects, found without recursion;
    every string (keys too) checked to be Unicode on the way.
    """
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, str):
            _unicode(item)
            continue
        if isinstance(item, dict):
            for key in item:
                _unicode(key)
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        if deepest > MAX_JSON_DEPTH:
            break
        stack.extend((child, level + 1) for child in children)
    return deepest


def read_json(request: IRequest) -> object:
    """
    The request's body as JSON: the one reader of every JSON route, so
    that every malformed body is the same 400 (the body's size is capped
    before it is read, see L{site.DevpiSite.body_limit}).

    @raise InvalidInput: not UTF-8 JSON (C{NaN} and C{Infinity} are not,
        nor are lone surrogates), or nested more than L{MAX_JSON_DEPTH}
        levels deep.
    """
    request.content.seek(0)
    raw = request.content.read()
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except RecursionError:
        raise InvalidInput(f"Bad request: JSON nested more than {MAX_JSON_DEPTH} levels deep") from None
    except (UnicodeDecodeError, ValueError):
        raise InvalidInput("Bad request: could not decode json") from None
    if _depth(data) > MAX_JSON_DEPTH:
        raise InvalidInput(f"Bad request: JSON nested more than {MAX_JSON_DEPTH} levels deep")
    return data
