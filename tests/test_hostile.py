"""
Hostile requests get whole, clear answers from the shared mechanisms: the
connection (request line and head limits, malformed requests), the
request (methods, unexpected errors with a request id), the one JSON
reader and the one name rule.
"""

from __future__ import annotations

import json
import socket

import pytest
import pytest_twisted
from twisted.logger import globalLogPublisher

from .conftest import basic


def raw(client, data: bytes):
    connection = client.connect()
    connection.send(data)
    client.flush()
    return connection


def answer_of(connection) -> tuple[bytes, dict[bytes, bytes], dict]:
    head, _, body = connection.received.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = dict(line.split(b": ", 1) for line in lines[1:])
    return lines[0], headers, json.loads(body) if body.startswith(b"{") else {}


def test_an_over_long_request_line_is_answered_414(client):
    connection = raw(client, b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = answer_of(connection)
    assert status == b"HTTP/1.1 414 URI Too Long"
    assert headers[b"Connection"] == b"close"
    assert body["message"] == "request line longer than 8192 bytes"
    assert connection.closed


def test_a_request_line_over_the_limit_but_under_twisteds_is_414_too(client):
    connection = raw(client, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer_of(connection)[0] == b"HTTP/1.1 414 URI Too Long"


@pytest.mark.parametrize(
    "headers", [[b"X-Big: " + b"b" * 70_000], [b"X-%d: %s" % (i, b"v" * 100) for i in range(700)]]
)
def test_an_over_large_head_is_answered_431(client, headers):
    connection = raw(client, b"GET / HTTP/1.1\r\nHost: x\r\n" + b"\r\n".join(headers) + b"\r\n\r\n")
    status, _, body = answer_of(connection)
    assert status == b"HTTP/1.1 431 Request Header Fields Too Large"
    assert body["message"] in ("request head larger than 65536 bytes", "more than 500 header fields")
    assert connection.closed


def test_a_malformed_request_is_a_whole_400(client):
    connection = raw(client, b"GET\r\n\r\n")
    status, headers, body = answer_of(connection)
    assert status == b"HTTP/1.1 400 Bad Request"
    assert body == {"message": "malformed HTTP request"}
    assert headers[b"Content-Length"] == str(len(json.dumps(body, indent=2)) + 1).encode()


def test_the_limits_are_the_sites(client):
    client.site.max_request_line = 100
    client.site.max_header_bytes = 1000
    assert (
        answer_of(raw(client, b"GET /" + b"a" * 200 + b" HTTP/1.1\r\n\r\n"))[0]
        == b"HTTP/1.1 414 URI Too Long"
    )
    head = b"GET / HTTP/1.1\r\nX-A: " + b"a" * 1000 + b"\r\n\r\n"
    assert answer_of(raw(client, head))[0] == b"HTTP/1.1 431 Request Header Fields Too Large"


@pytest.mark.parametrize("method", [b"get", b"Get", b"BREW", b"TRACE"])
def test_methods_are_case_sensitive_and_unknown_ones_not_implemented(client, method):
    connection = raw(client, method + b" /+api HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\n\r\n")
    status, _, body = answer_of(connection)
    assert status == b"HTTP/1.1 501 Not Implemented"
    assert method.decode() in body["message"]


def test_http10_without_a_host_is_answered(client):
    connection = raw(client, b"GET /+api HTTP/1.0\r\nAccept: application/json\r\n\r\n")
    status, _, body = answer_of(connection)
    assert status == b"HTTP/1.0 200 OK"
    assert body["result"]["login"].endswith("/+login")


def test_an_unexpected_error_is_a_500_with_a_request_id_that_the_log_names(client, monkeypatch):
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)

    def broken(prefix):
        raise RuntimeError("the disk caught fire")

    monkeypatch.setattr(client.context.storage, "keys", broken)
    try:
        answer = client.get("/")
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert answer.code == 500
    request_id = answer.header("X-Devpi-Request-Id")
    assert request_id and answer.message == f"internal error; the server log has request id {request_id}"
    assert "fire" not in answer.body.decode()
    (logged,) = [e for e in events if e.get("request_id") == request_id]
    assert "the disk caught fire" in logged["log_failure"].getTraceback()


# -- JSON bodies ---------------------------------------------------------------------


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize("depth", [33, 100_000])
@pytest.mark.parametrize(
    "method, path",
    [
        ("PUT", "/mallory"),
        ("PATCH", "/alice"),
        ("POST", "/+login"),
        ("PUT", "/alice/dev"),
        ("PATCH", "/alice/base"),
    ],
)
def test_deeply_nested_json_is_400(client, alice, method, path, depth):
    client.request("PUT", "/alice/base", {}, headers=alice)
    serial = client.context.storage.serial
    answer = client.request(method, path, raw=nested(depth), headers=alice)
    assert answer.code == 400, answer.body
    assert answer.message == "Bad request: JSON nested more than 32 levels deep"
    assert client.context.storage.serial == serial


def test_json_within_the_depth_is_read(client, alice):
    value = json.loads(nested(30))
    answer = client.request("PATCH", "/alice", {"custom_data": value}, headers=alice)
    assert answer.code in (200, 400), answer.body  # judged by the route, not the reader
    assert "nested" not in answer.message


# -- names ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["..", ".", "%2e%2e", "%2E", "+x", "a b", "a%2fb"])
def test_path_segments_and_reserved_names_are_never_user_names(client, name):
    answer = client.request("PUT", f"/{name}", {"password": "pw"})
    assert answer.code == 400, (name, answer.body)
    listed = client.get("/").json["result"]
    assert set(listed) == {"root"}


@pytest.mark.parametrize("name", ["..", ".", "%2e%2e", "+simple", "+api"])
def test_path_segments_and_reserved_names_are_never_index_names(client, alice, name):
    answer = client.request("PUT", f"/alice/{name}", {}, headers=alice)
    assert answer.code in (400, 405), (name, answer.code, answer.body)
    assert client.get("/alice").json["result"]["indexes"] == {}


def test_dot_dot_is_no_user(client):
    assert client.get("/..").code in (400, 404)
    assert client.get("/%2e%2e").code in (400, 404)


def test_basic_auth_for_a_dot_user_is_refused_not_crashed(client):
    answer = client.request("PUT", "/alice/dev", {}, headers=basic("..", "x"))
    assert answer.code in (400, 401, 403, 404)


@pytest_twisted.ensureDeferred
async def test_a_refusal_is_read_by_a_client_that_is_still_sending(context):
    """
    Over a real socket: a request line refused (414) while the client
    goes on sending it; the client reads the whole answer rather than
    nothing or a connection reset.
    """
    from twisted.internet import reactor
    from twisted.internet.threads import deferToThread

    from devpi_tx.service import make_site

    port = reactor.listenTCP(0, make_site(context), interface="127.0.0.1")

    def client() -> bytes:
        with socket.create_connection(("127.0.0.1", port.getHost().port), timeout=10) as sock:
            sock.sendall(b"GET /")
            try:
                for _ in range(120):
                    sock.sendall(b"a" * 65536)
            except OSError:
                pass  # the server may close its side once the client is slow to stop
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
            return received

    try:
        received = await deferToThread(client)
    finally:
        await port.stopListening()
    assert received.startswith(b"HTTP/1.1 414 URI Too Long"), received[:200]
    assert received.endswith(b"}\n")


# -- what the fuzz run found ---------------------------------------------------------------


@pytest.mark.parametrize(
    "target, message",
    [
        (b"/%c0%af/+api", "the request path is not UTF-8"),
        (b"/a%00b/+api", "the request path holds control characters"),
        (b"/%2f/", "names cannot contain '/' (an encoded slash in the path)"),
    ],
)
def test_request_paths_that_are_no_names(client, target, message):
    status, _, body = answer_of(
        raw(client, b"GET " + target + b" HTTP/1.1\r\nAccept: application/json\r\n\r\n")
    )
    assert status == b"HTTP/1.1 400 Bad Request"
    assert body["message"] == message


@pytest.mark.parametrize("host", [b"x" * 64, b"a..b", b"ex ample", b"[zz]"])
def test_a_bad_host_header_is_400(client, host):
    head = b"GET /+api HTTP/1.1\r\nHost: " + host + b"\r\nAccept: application/json\r\n\r\n"
    status, _, body = answer_of(raw(client, head))
    assert status == b"HTTP/1.1 400 Bad Request"
    assert body["message"] == "bad Host header"


def test_a_header_that_is_not_utf8_is_read_not_crashed_on(client):
    status, _, _ = answer_of(raw(client, b"GET /+api HTTP/1.1\r\nHost: x\r\nAccept: \xff\xfe\r\n\r\n"))
    assert status == b"HTTP/1.1 200 OK"


@pytest.mark.parametrize(
    "body, message",
    [
        (b'{"title": NaN}', "Bad request: NaN is not JSON"),
        (b'{"title": Infinity}', "Bad request: Infinity is not JSON"),
        (b'{"title": "\\ud800"}', "Bad request: JSON holds a lone surrogate (\\ud800-\\udfff), not Unicode"),
        (b'{"\\udfff": 1}', "Bad request: JSON holds a lone surrogate (\\ud800-\\udfff), not Unicode"),
    ],
)
def test_json_that_is_not_json_or_not_unicode_is_400(client, alice, body, message):
    answer = client.request("PATCH", "/alice", raw=body, headers=alice)
    assert (answer.code, answer.message) == (400, message)


@pytest.mark.parametrize("name", ["a%23b", "%3f", "..", "(a)"])
def test_explain_takes_project_names_only(client, alice, name):
    client.request("PUT", "/alice/dev", {}, headers=alice)
    answer = client.get(f"/alice/dev/+explain/{name}", headers=alice)
    assert answer.code == 400, answer.body
    assert "invalid project name" in answer.message


@pytest.mark.parametrize("path", ["/+x/+api", "/%2e%2e/+api", "/alice/+x/+api"])
def test_api_of_a_name_that_is_no_name_is_400(client, alice, path):
    assert client.get(path).code == 400


def test_an_upstream_page_is_asked_for_by_a_quoted_name(client, upstream):
    client.get("/root/pypi/+simple/a%23b/", accept="application/vnd.pypi.simple.v1+json")
    assert ("GET", "/simple/a%23b/") in upstream.requests


@pytest.mark.parametrize(
    "posturl, message",
    [
        ("http://[::1/x/", "push: 'posturl' is not a URL: Invalid IPv6 URL"),
        (
            "http://" + "x" * 64 + "/x/",
            "push: 'posturl' has an invalid host name (labels of 63 characters at most)",
        ),
    ],
)
def test_push_urls_that_are_no_urls(client, alice, posturl, message):
    client.request("PUT", "/alice/dev", {}, headers=alice)
    body = {"name": "pkg-a", "version": "1.0", "posturl": posturl, "username": "u", "password": "p"}
    answer = client.request("PUSH", "/alice/dev", body, headers=alice)
    assert (answer.code, answer.message) == (400, message)
