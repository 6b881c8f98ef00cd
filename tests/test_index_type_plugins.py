"""
Index types of installed distributions: found through entry points of
group C{devpi_tx.indexes} (a tiny distribution in a temporary directory
on C{sys.path}), logged, listed by C{/+api}; a broken one stops the start
in one line naming it.
"""

from __future__ import annotations

import textwrap

import pytest
from twisted.logger import globalLogPublisher

from devpi_tx.customizers.plugins import PluginError, find_index_types
from devpi_tx.service import build_context

from .conftest import Client, synchronous, synchronous_passwords
from .test_startup import keep_excepthook, twistd_options  # noqa: F401 (a fixture)

MODULE = """
from devpi_tx.customizers import BaseStageCustomizer


class Plain(BaseStageCustomizer):
    type_name = "plain"


class NoType(BaseStageCustomizer):
    pass


class NotOne:
    type_name = "notone"


class Mirrorish(BaseStageCustomizer):
    type_name = "mirror"


INSTANCE = Plain()
"""


def install(tmp_path, monkeypatch, lines: str, module: str = MODULE, name: str = "typeplug") -> None:
    """
    A distribution C{name} 1.2 with entry points C{lines} in group
    C{devpi_tx.indexes}, importable from C{tmp_path}.
    """
    (tmp_path / f"{name}.py").write_text(module)
    info = tmp_path / f"{name}-1.2.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.2\n")
    (info / "entry_points.txt").write_text("[devpi_tx.indexes]\n" + textwrap.dedent(lines))
    monkeypatch.syspath_prepend(str(tmp_path))


@pytest.fixture
def plugin_dir(tmp_path):
    path = tmp_path / "site"
    path.mkdir()
    return path


def test_nothing_installed_nothing_found():
    assert [found.type_name for found in find_index_types()] == []


def test_a_class_or_an_instance_is_found_with_its_distribution(plugin_dir, monkeypatch):
    install(plugin_dir, monkeypatch, "plain = typeplug:Plain\n")
    [found] = find_index_types()
    assert (found.type_name, found.entry_point, found.distribution, found.version) == (
        "plain",
        "plain",
        "typeplug",
        "1.2",
    )
    assert type(found.customizer).__name__ == "Plain"


@pytest.mark.parametrize(
    "target, message",
    [
        ("nosuchmodule:Plain", "ModuleNotFoundError: No module named 'nosuchmodule'"),
        ("typeplug:Missing", "AttributeError: module 'typeplug' has no attribute 'Missing'"),
        ("typeplug:NotOne", "does not provide IStageCustomizer"),
        ("typeplug:NoType", "its type_name must be a non-empty string, got ''"),
        ("typeplug:Mirrorish", "index type 'mirror' is already defined"),
    ],
)
def test_a_broken_plugin_is_named(plugin_dir, monkeypatch, target, message):
    install(plugin_dir, monkeypatch, f"broken = {target}\n")
    with pytest.raises(PluginError) as info:
        find_index_types()
    text = str(info.value)
    assert text.startswith(f"index type plugin 'broken' ({target}, from typeplug 1.2): ")
    assert message in text
    assert "\n" not in text


def test_two_plugins_of_one_type(plugin_dir, monkeypatch):
    install(plugin_dir, monkeypatch, "a = typeplug:Plain\nb = typeplug:INSTANCE\n")
    with pytest.raises(PluginError, match="plugin 'b' .*: index type 'plain' is already defined"):
        find_index_types()


def test_a_broken_plugin_stops_the_start_in_one_line(plugin_dir, monkeypatch, tmp_path, keep_excepthook):  # noqa: F811
    install(plugin_dir, monkeypatch, "broken = nosuchmodule:Plain\n")
    with pytest.raises(SystemExit) as info:
        twistd_options(tmp_path, "--serverdir", str(tmp_path / "server"))
    assert str(info.value.code) == (
        "twistd devpi: error: index type plugin 'broken' (nosuchmodule:Plain, from typeplug 1.2): "
        "ModuleNotFoundError: No module named 'nosuchmodule'"
    )
    assert not (tmp_path / "server").exists()


def test_found_types_are_logged_usable_and_listed(plugin_dir, monkeypatch, config):
    install(plugin_dir, monkeypatch, "plain = typeplug:Plain\n")
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        context = build_context(config, passwords=synchronous_passwords(), run_in_thread=synchronous)
    finally:
        globalLogPublisher.removeObserver(events.append)
    try:
        logged = [e for e in events if e.get("type") == "plain" and e.get("dist") == "typeplug"]
        assert [(e["version"], e["name"]) for e in logged] == [("1.2", "plain")]
        client = Client(context)
        types = client.get("/+api").json["result"]["index-types"]
        assert types == ["constrained", "cutoff", "minage", "mirror", "plain", "stage"]
        root = client.login("root", "rootpw")
        answer = client.request("PUT", "/root/p", {"type": "plain"}, headers=root)
        assert answer.code == 200, answer.body
        assert client.get("/root/p").json["result"]["type"] == "plain"
    finally:
        context.close()


@pytest.mark.parametrize("name", ["stage", "mirror", "constrained", "minage", "cutoff"])
def test_no_plugin_takes_a_builtin_name(name):
    from devpi_tx.customizers import BUILTIN_TYPES, StageCustomizer, default_registry

    assert name in BUILTIN_TYPES
    taker = StageCustomizer()
    taker.type_name = name
    with pytest.raises(ValueError, match="registered already"):
        default_registry().register(taker)
