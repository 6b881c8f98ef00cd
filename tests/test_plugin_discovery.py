"""
Authenticator and event listener plugins are found through the entry
points of groups C{devpi_tx.authenticators} and C{devpi_tx.events}
(a tiny distribution on C{sys.path}), checked with C{verifyObject}, and
a broken one stops the start in one line naming it.
"""

from __future__ import annotations

import textwrap

import pytest

from devpi_tx.plugins import PluginError, find_authenticators, find_event_listeners

from .test_startup import keep_excepthook, twistd_options  # noqa: F401 (a fixture)

MODULE = """
from zope.interface import implementer

from devpi_tx.auth.external import MemoryAuthenticator
from devpi_tx.interfaces import IAuthenticator, IEventListener


def Users():
    return MemoryAuthenticator({"erin": ("pw", ["devs"])})


@implementer(IEventListener)
class Hooks:
    name = "hooks"

    def on_upload(self, event):
        pass

    def on_remove(self, event):
        pass

    def on_index_change(self, event):
        pass


@implementer(IEventListener)
class Partial:
    name = "partial"

    def on_upload(self, event):
        pass


class Unmarked:
    def authenticate(self, username, password):
        pass


def Fails():
    raise RuntimeError("no directory configured")


HOOKS = Hooks()
"""


def install(path, monkeypatch, text: str) -> None:
    (path / "authplug.py").write_text(MODULE)
    info = path / "authplug-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: authplug\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(path))


@pytest.fixture
def plugin_dir(tmp_path):
    path = tmp_path / "site"
    path.mkdir()
    return path


def test_nothing_installed_nothing_found():
    assert find_authenticators() == []
    assert find_event_listeners() == []


def test_factories_and_instances_are_found_with_their_distribution(plugin_dir, monkeypatch):
    install(
        plugin_dir,
        monkeypatch,
        """
        [devpi_tx.authenticators]
        users = authplug:Users
        [devpi_tx.events]
        b = authplug:HOOKS
        a = authplug:Hooks
        """,
    )
    [users] = find_authenticators()
    assert (users.entry_point, users.distribution, users.version) == ("users", "authplug", "0.3")
    assert type(users.provider).__name__ == "MemoryAuthenticator"
    assert [found.entry_point for found in find_event_listeners()] == ["a", "b"]


@pytest.mark.parametrize(
    "group, target, message",
    [
        ("devpi_tx.authenticators", "authplug:Unmarked", "does not provide IAuthenticator"),
        ("devpi_tx.authenticators", "authplug:Fails", "RuntimeError: no directory configured"),
        ("devpi_tx.authenticators", "authplug:Missing", "AttributeError: module 'authplug'"),
        ("devpi_tx.events", "authplug:Partial", "does not provide IEventListener"),
        ("devpi_tx.events", "nosuch:Hooks", "ModuleNotFoundError: No module named 'nosuch'"),
    ],
)
def test_a_broken_plugin_is_named_in_one_line(plugin_dir, monkeypatch, group, target, message):
    install(plugin_dir, monkeypatch, f"[{group}]\nbroken = {target}\n")
    find = find_authenticators if group.endswith("authenticators") else find_event_listeners
    kind = "authenticator" if group.endswith("authenticators") else "event listener"
    with pytest.raises(PluginError) as info:
        find()
    text = str(info.value)
    assert text.startswith(f"{kind} plugin 'broken' ({target}, from authplug 0.3): ")
    assert message in text
    assert "\n" not in text


def test_a_broken_plugin_stops_the_start_in_one_line(plugin_dir, monkeypatch, tmp_path, keep_excepthook):  # noqa: F811
    install(plugin_dir, monkeypatch, "[devpi_tx.events]\nbroken = authplug:Partial\n")
    with pytest.raises(SystemExit) as info:
        twistd_options(tmp_path, "--serverdir", str(tmp_path / "server"))
    line = str(info.value.code)
    assert line.startswith(
        "twistd devpi: error: event listener plugin 'broken' (authplug:Partial, from authplug 0.3): "
        "does not provide IEventListener: "
    )
    assert "\n" not in line
    assert not (tmp_path / "server").exists()
