"""
The service tree that make_service builds: what is in it, in which order
it starts and stops, and that the state closes after everything that
writes to it.
"""

from __future__ import annotations

import pytest
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock

from devpi_tx.auth.passwords import fast_hasher
from devpi_tx.config import ServerConfig
from devpi_tx.service import CallOnStop, OrderedMultiService, make_service


class Recorded(Service):
    """
    Records its stop in C{log}; with C{hold}, stopping waits for it.
    """

    def __init__(self, name: str, log: list[str], hold: Deferred | None = None) -> None:
        self.setName(name)
        self._log = log
        self._hold = hold

    def stopService(self):
        super().stopService()
        self._log.append(self.name)
        return self._hold


def test_children_stop_in_reverse_one_after_another():
    log: list[str] = []
    held: Deferred = Deferred()
    root = OrderedMultiService()
    Recorded("state", log).setServiceParent(root)
    Recorded("worker", log).setServiceParent(root)
    Recorded("web", log, hold=held).setServiceParent(root)
    root.startService()
    done: list = []
    root.stopService().addBoth(done.append)
    # The web server has not finished stopping: nothing behind it stops yet.
    assert log == ["web"] and done == []
    held.callback(None)
    assert log == ["web", "worker", "state"]
    assert done == [None]


def test_a_failing_stop_does_not_keep_the_rest_running():
    log: list[str] = []
    root = OrderedMultiService()
    Recorded("state", log).setServiceParent(root)
    CallOnStop("broken", lambda: 1 / 0).setServiceParent(root)
    root.startService()
    root.stopService()
    assert log == ["state"]


@pytest.fixture
def config(tmp_path):
    return ServerConfig(
        serverdir=str(tmp_path / "server"),
        mirror_url="http://127.0.0.1:9/simple/",
        root_passwd_hash=fast_hasher().hash("rootpw"),
        access_log="off",
        listen=("tcp:0:interface=127.0.0.1",),
    )


def test_make_service_builds_one_tree_with_the_state_closed_last(config):
    reactor = MemoryReactorClock()
    root = make_service(config, reactor)
    names = [service.name for service in root]
    assert names[:7] == [
        "state",
        "coordinator",
        "changefeed",
        "upstream",
        "derived-blobs",
        "project-lists",
        "sendfile",
    ]
    assert len(names) == 8  # and one web server per endpoint
    root.startService()
    assert reactor.tcpServers  # listening, on the injected reactor
    state = root.getServiceNamed("state")
    assert state.running
    storage = state._on_stop.__self__
    assert storage.get("user/root") is not None
    # root/pypi's project list is being fetched (the connection never
    # completes on this reactor): stopping cancels it, and does not wait.
    assert reactor.tcpClients
    done: list = []
    root.stopService().addBoth(done.append)
    assert done == [None]
    assert not state.running
    with pytest.raises(Exception, match="closed"):
        with storage.transaction() as tx:
            tx.set("x", 1)


def test_debug_events_are_written_only_with_debug():
    from twisted.logger import globalLogPublisher

    from devpi_tx.logs import logger, set_debug

    seen: list[str] = []

    def observe(event):
        if event.get("log_namespace") == "devpi_tx.test":
            seen.append(event["log_level"].name)

    globalLogPublisher.addObserver(observe)
    log = logger("devpi_tx.test")
    try:
        set_debug(False)
        log.debug("hidden")
        log.info("shown")
        set_debug(True)
        log.debug("shown too")
    finally:
        globalLogPublisher.removeObserver(observe)
    assert seen == ["info", "debug"]


def test_the_plugins_the_start_checks_found_are_not_loaded_again(config, monkeypatch):
    from devpi_tx import service
    from devpi_tx.startup import FoundPlugins

    def again(*args, **kwargs):
        raise AssertionError("plugins loaded a second time")

    for name in ("find_index_types", "find_authenticators", "find_event_listeners"):
        monkeypatch.setattr(service, name, again)
    root = make_service(config, MemoryReactorClock(), plugins=FoundPlugins([], [], []))
    assert root.getServiceNamed("state") is not None
