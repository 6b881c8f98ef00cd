"""
Event listener plugins (L{IEventListener}): told of uploads, removals and
index changes after the commit, in a later turn of the reactor, after the
answer was sent; a failing or slow listener is logged and changes no
answer.
"""

from __future__ import annotations

import pytest
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.logger import globalLogPublisher
from zope.interface import implementer
from zope.interface.verify import verifyObject

from devpi_tx.events import EventDispatcher, IndexChangeEvent, RemoveEvent, UploadEvent
from devpi_tx.interfaces import IEventListener

from .distfiles import make_wheel, upload_form


@implementer(IEventListener)
class Recorder:
    """
    Keeps each event with the Deferred it returned (fired by the test).
    """

    name = "recorder"

    def __init__(self, fail: bool = False) -> None:
        self.events: list = []
        self.pending: list[Deferred] = []
        self.fail = fail

    def _record(self, event):
        if self.fail:
            raise RuntimeError("webhook down")
        self.events.append(event)
        d = Deferred()
        self.pending.append(d)
        return d

    on_upload = on_remove = on_index_change = _record


@pytest.fixture
def logged():
    events: list = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def listen(client, *listeners) -> task.Clock:
    clock = task.Clock()
    client.context.events = EventDispatcher(listeners, clock)
    return clock


def upload(client, headers, version="1.0"):
    filename, data = make_wheel("pkg-a", version)
    content_type, body = upload_form("pkg-a", version, filename, data)
    return client.request(
        "POST", "/alice/dev/", raw=body, headers={"Content-Type": content_type, **headers}, accept=None
    )


def test_recorder_provides_the_interface():
    assert verifyObject(IEventListener, Recorder())


def test_the_answer_is_sent_before_the_listener_runs_or_finishes(client, alice):
    recorder = Recorder()
    clock = listen(client, recorder)
    assert client.request("PUT", "/alice/dev", {}, headers=alice).code == 200
    answer = upload(client, alice)
    # Answered; the listener not even called yet.
    assert answer.code == 200, answer.body
    assert recorder.events == []
    clock.advance(0)
    created, uploaded = recorder.events
    assert created == IndexChangeEvent("alice/dev", "created", None, created.new, "alice")
    assert created.new["type"] == "stage"
    assert isinstance(uploaded, UploadEvent)
    assert (uploaded.stage, uploaded.project, uploaded.version, uploaded.rel, uploaded.user) == (
        "alice/dev",
        "pkg-a",
        "1.0",
        "releasefile",
        "alice",
    )
    assert uploaded.link["basename"] == "pkg_a-1.0-py3-none-any.whl"
    # Its Deferreds still run: the answers did not wait for them.
    assert [d.called for d in recorder.pending] == [False, False]
    assert len(client.context.events.running) == 2
    for d in recorder.pending:
        d.callback(None)
    assert client.context.events.running == set()


def test_removals_and_index_changes(client, alice):
    assert client.request("PUT", "/alice/dev", {}, headers=alice).code == 200
    assert upload(client, alice).code == 200
    recorder = Recorder()
    clock = listen(client, recorder)
    assert client.request("PATCH", "/alice/dev/pkg-a/1.0", {"yanked": True}, headers=alice).code == 200
    assert client.request("DELETE", "/alice/dev/pkg-a/1.0", headers=alice).code == 200
    assert client.request("PATCH", "/alice/dev", {"title": "T"}, headers=alice).code == 200
    assert client.request("DELETE", "/alice/dev", headers=alice).code == 201
    clock.advance(0)
    yank, version, modified, deleted = recorder.events
    assert yank == RemoveEvent("alice/dev", "yank", "pkg-a", "1.0", user="alice")
    assert version == RemoveEvent("alice/dev", "version", "pkg-a", "1.0", user="alice")
    assert (modified.action, modified.old.get("title"), modified.new["title"]) == ("modified", None, "T")
    assert (deleted.action, deleted.new, deleted.old["title"]) == ("deleted", None, "T")


def test_a_failing_listener_is_logged_and_changes_nothing(client, alice, logged):
    good = Recorder()
    clock = listen(client, Recorder(fail=True), good)
    assert client.request("PUT", "/alice/dev", {}, headers=alice).code == 200
    clock.advance(0)
    assert len(good.events) == 1
    failures = [e for e in logged if e.get("method") == "on_index_change" and "log_failure" in e]
    assert len(failures) == 1
    assert failures[0]["log_failure"].check(RuntimeError)


def test_a_slow_listener_is_logged(client, alice, logged):
    recorder = Recorder()
    clock = listen(client, recorder)
    assert client.request("PUT", "/alice/dev", {}, headers=alice).code == 200
    clock.advance(0)
    clock.advance(EventDispatcher.slow_after)
    slow = [e for e in logged if e.get("name") == "recorder" and "still running" in e.get("log_format", "")]
    assert len(slow) == 1
    recorder.pending[0].callback(None)
    assert clock.getDelayedCalls() == []


def test_a_coroutine_listener_is_awaited(client, alice):
    seen = []

    @implementer(IEventListener)
    class Async:
        name = "async"

        async def on_index_change(self, event):
            seen.append(event.action)

        async def on_upload(self, event):
            pass

        async def on_remove(self, event):
            pass

    clock = listen(client, Async())
    assert client.request("PUT", "/alice/dev", {}, headers=alice).code == 200
    assert seen == []
    clock.advance(0)
    assert seen == ["created"]


def test_tox_results_and_file_removal(client, alice):
    assert client.request("PUT", "/alice/dev", {}, headers=alice).code == 200
    assert upload(client, alice).code == 200
    [link] = client.get("/alice/dev/pkg-a/1.0").json["result"]["+links"]
    path = "/" + link["href"].split("/", 3)[3]
    recorder = Recorder()
    clock = listen(client, recorder)
    assert client.request("POST", path, {"testenvs": {"py311": {}}}).code == 200
    assert client.request("DELETE", path, headers=alice).code == 200
    clock.advance(0)
    tox, removed = recorder.events
    assert (tox.rel, tox.project, tox.version, tox.user) == ("toxresult", "pkg-a", "1.0", None)
    assert tox.link["relpath"].startswith("alice/dev/+f/")
    assert removed == RemoveEvent("alice/dev", "file", relpath=path[1:], user="alice")
