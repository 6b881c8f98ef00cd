"""
The installer fast path answers project pages exactly as the Klein app
does, and hands everything else (errors included) to Klein.
"""

from __future__ import annotations

from unittest import mock

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from devpi_tx.web.installer import InstallerFastPath

from .conftest import Client
from .distfiles import make_wheel
from .fakeupstream import Release

PIP_ACCEPT = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1"


@pytest.fixture
def hello(upstream):
    filename, data = make_wheel("hello", "1.0")
    upstream.add("hello", Release(filename, data), serial=5)


def klein_only(client, method, path, headers):
    """
    The same request through the Klein app alone (in the same site).
    """
    klein = Client(client.context, api=client.api, resource=client.api.app.resource())
    return klein.request(method, path, headers=headers, accept=None)


def comparable(answer):
    headers = {
        name: values
        for name, values in answer.headers.getAllRawHeaders()
        if name.lower() not in (b"date", b"x-devpi-serial")
    }
    return answer.code, headers, answer.body


@pytest.mark.parametrize(
    "method, path, accept",
    [
        ("GET", "/root/pypi/+simple/hello/", PIP_ACCEPT),
        ("GET", "/root/pypi/+simple/hello/", "text/html"),
        ("HEAD", "/root/pypi/+simple/hello/", PIP_ACCEPT),
        ("GET", "/root/pypi/+simple/hello/", "image/png"),  # 406
        ("GET", "/root/pypi/+simple/Hello/", PIP_ACCEPT),  # redirect to the normalised name
        ("GET", "/root/nosuch/+simple/hello/", PIP_ACCEPT),  # no such index: Klein's handler
        ("GET", "/root/pypi/+simple/nosuch/", PIP_ACCEPT),  # 404 from upstream
        ("GET", "/root/pypi/+simple/hel%6co/", PIP_ACCEPT),  # encoded: Klein decodes it
    ],
)
def test_same_answer_as_klein(client, hello, method, path, accept):
    client.get("/root/pypi/+simple/hello/", accept=PIP_ACCEPT)  # cached, so both answer alike
    client.get("/root/pypi/+simple/nosuch/", accept=PIP_ACCEPT)
    fast = client.request(method, path, accept=accept)
    slow = klein_only(client, method, path, {"Accept": accept})
    assert comparable(fast) == comparable(slow)
    if method == "HEAD":
        assert fast.body == b"" and int(fast.header("content-length")) > 0


def test_project_pages_skip_klein_and_the_rest_do_not(client, hello):
    client.get("/root/pypi/+simple/hello/", accept=PIP_ACCEPT)
    klein = type(client.api.app.resource())
    with mock.patch.object(klein, "render", autospec=True, side_effect=klein.render) as render:
        assert client.get("/root/pypi/+simple/hello/", accept=PIP_ACCEPT).code == 200
        assert render.call_count == 0
        assert client.get("/root/pypi/+simple/hello", accept=PIP_ACCEPT).code == 200
        assert render.call_count == 1


class Routes:
    """
    A stand-in for the handlers: project pages answer with a Deferred
    (as when upstream is being asked).
    """

    def __init__(self):
        self.pending = Deferred()

    def simple_project_page(self, request, user, index, project):
        return self.pending


def fast_request(path=b"/root/pypi/+simple/hello/"):
    request = DummyRequest(path.split(b"/")[1:])
    request.path = path
    request.method = b"GET"
    return request


def test_answer_after_the_client_left_is_dropped():
    routes = Routes()
    resource = InstallerFastPath(Resource(), routes)
    request = fast_request()
    assert resource.render(request) is NOT_DONE_YET
    request.processingFailed(Failure(ConnectionDone()))  # the client went away
    routes.pending.callback(b"the page")
    assert request.written == []
    assert request.finished == 0


def test_failed_answer_is_a_processing_failure():
    routes = Routes()
    resource = InstallerFastPath(Resource(), routes)
    request = fast_request()
    failures = []
    request.processingFailed = failures.append
    assert resource.render(request) is NOT_DONE_YET
    routes.pending.errback(RuntimeError("bug"))
    assert [f.value.args for f in failures] == [("bug",)]
    assert request.written == []
