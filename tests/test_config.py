"""
Options, config files, the default upstream, initialisation and the
devpi-tx command.
"""

from __future__ import annotations

import json
import os
import stat

import pytest

from devpi_tx import pipconfig
from devpi_tx.auth.passwords import fast_hasher
from devpi_tx.cli.main import main as cli_main
from devpi_tx.config import ConfigError, ServerConfig, build_config
from devpi_tx.options import ServerOptions
from devpi_tx.serverdir import AlreadyInitialized, initialize, read_nodeinfo
from devpi_tx.storage.sqlite import open_storage


def parse(*argv, environ=None):
    options = ServerOptions()
    options.parseOptions(list(argv))
    return options.config


def test_defaults(monkeypatch):
    monkeypatch.delenv("DEVPISERVER_SERVERDIR", raising=False)
    config = parse()
    assert config.serverdir == os.path.expanduser("~/.devpi-tx/server")
    assert config.endpoints == ("tcp:3141:interface=127.0.0.1",)
    assert config.request_timeout == 5.0
    assert config.mirror_cache_expiry == 1800


def test_devpi_server_option_names(tmp_path):
    config = parse(
        "--serverdir", str(tmp_path), "--host", "0.0.0.0", "--port", "4000",
        "--outside-url", "https://pypi.example.org", "--absolute-urls",
        "--restrict-modify", "root,:admins", "--request-timeout", "2.5",
        "--offline-mode", "--mirror-url", "http://127.0.0.1:9/simple/",
    )  # fmt: skip
    assert config.endpoints == ("tcp:4000:interface=0.0.0.0",)
    assert config.absolute_urls and config.offline_mode
    assert config.restrict_modify == "root,:admins"
    assert config.request_timeout == 2.5


def test_listen_is_repeatable_and_overrides_host_port():
    config = parse("--port", "1", "--listen", "tcp:3141", "--listen", "ssl:3443:privateKey=k:certKey=c")
    assert config.endpoints == ("tcp:3141", "ssl:3443:privateKey=k:certKey=c")


@pytest.mark.parametrize(
    "argv, word",
    [
        (["--bogus"], "bogus"),
        (["--port", "http"], "port"),
        (["--role", "leader"], "role"),
        (["--outside-url", "nope"], "outside-url"),
        (["--role", "replica"], "primary-url"),
        (["--role", "primary", "--primary-url", "https://p.example.com"], "primary-url"),
        (["--role", "standalone", "--master-url", "https://p.example.com"], "primary-url"),
        (["--primary-url", "p.example.com"], "primary-url"),
        (["--primary-url", "ftp://p.example.com/"], "primary-url"),
        (["--primary-url", "http://"], "primary-url"),
        (["--primary-url", "http://p.example.com:port/"], "primary-url"),
        (["--replica-max-retries", "-1"], "replica-max-retries"),
        (["--replica-max-retries", "x"], "replica-max-retries"),
        (["--file-replication-threads", "0"], "file-replication-threads"),
        (["--proxy-timeout", "0"], "proxy-timeout"),
        (["--proxy-timeout", "-3"], "proxy-timeout"),
        (["--proxy-timeout", "nan"], "proxy-timeout"),
        (["--proxy-timeout", "soon"], "proxy-timeout"),
        (["--file-replication-skip-indexes", "alice/dev,nonsense"], "file-replication-skip-indexes"),
        (["--file-replication-skip-indexes", "alice/d:ev"], "file-replication-skip-indexes"),
        (["--replica-file-search-path", "/nonexistent/dir"], "replica-file-search-path"),
        (["--replica-cert", "/nonexistent/cert.pem"], "replica-cert"),
    ],
)
def test_bad_option_one_line_message(argv, word):
    with pytest.raises(SystemExit) as info:
        parse(*argv)
    message = str(info.value.code)
    assert "\n" not in message
    assert word in message


@pytest.mark.parametrize(
    "argv, role",
    [
        ([], "standalone"),
        (["--role", "auto"], "standalone"),
        (["--role", "standalone"], "standalone"),
        (["--role", "primary"], "primary"),
        (["--role", "MASTER"], "primary"),
        (["--primary-url", "https://p.example.com/"], "replica"),
        (["--role", "auto", "--master-url", "http://p.example.com:3141"], "replica"),
        (["--role", "replica", "--primary-url", "https://p.example.com/"], "replica"),
    ],
)
def test_role_is_resolved(argv, role):
    config = parse(*argv)
    assert (config.role, config.effective_role) == (role, role)


def test_effective_role_of_a_config_made_directly():
    assert ServerConfig(serverdir="/s").effective_role == "standalone"
    assert ServerConfig(serverdir="/s", primary_url="http://p.example.com").effective_role == "replica"
    assert ServerConfig(serverdir="/s", role="primary").effective_role == "primary"


def test_replication_defaults():
    config = parse()
    assert config.primary_url is None
    assert config.replica_max_retries == 0
    assert config.replica_file_search_path is None
    assert config.hard_links is False
    assert config.file_replication_threads == 5
    assert config.file_replication_skip_indexes == ()
    assert config.proxy_timeout == 30.0
    assert config.replica_cert is None


def test_replication_options(tmp_path):
    cert = tmp_path / "replica.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    config = parse(
        "--primary-url", "https://primary.example.com/", "--replica-max-retries", "3",
        "--replica-file-search-path", str(tmp_path), "--hard-links",
        "--file-replication-threads", "2", "--file-replication-skip-indexes", "alice/dev, mirror",
        "--proxy-timeout", "2.5", "--replica-cert", str(cert),
    )  # fmt: skip
    assert config.role == "replica"
    assert config.primary_url == "https://primary.example.com/"
    assert config.replica_max_retries == 3
    assert config.replica_file_search_path == str(tmp_path)
    assert config.hard_links is True
    assert config.file_replication_threads == 2
    assert config.file_replication_skip_indexes == ("alice/dev", "mirror")
    assert config.proxy_timeout == 2.5
    assert config.replica_cert == str(cert)


def test_replication_options_from_file_and_environment(tmp_path):
    path = tmp_path / "devpi.yml"
    path.write_text(
        "devpi-server:\n  role: replica\n  master-url: http://primary.example.com:3141\n"
        "  hard-links: yes\n  file-replication-skip-indexes: [all]\n  proxy-timeout: 5\n"
    )
    environ = {"DEVPISERVER_FILE_REPLICATION_THREADS": "9", "DEVPISERVER_REPLICA_MAX_RETRIES": "1"}
    config = build_config({}, str(path), environ=environ)
    assert config.role == "replica"
    assert config.primary_url == "http://primary.example.com:3141"
    assert config.hard_links is True
    assert config.file_replication_skip_indexes == ("all",)
    assert config.proxy_timeout == 5.0
    assert (config.file_replication_threads, config.replica_max_retries) == (9, 1)
    # The command line's role wins, and a primary has no primary.
    with pytest.raises(ConfigError, match="^option primary-url: a primary has no primary"):
        build_config({"role": "primary"}, str(path), environ=environ)


@pytest.mark.parametrize(
    "text, word",
    [
        ("devpi-server:\n  file-replication-threads: yes\n", "file-replication-threads"),
        ("devpi-server:\n  proxy-timeout: [1]\n", "proxy-timeout"),
        ("devpi-server:\n  file-replication-skip-indexes: {a: 1}\n", "file-replication-skip-indexes"),
        ("devpi-server:\n  role: replica\n", "primary-url"),
    ],
)
def test_bad_replication_options_in_a_file(tmp_path, text, word):
    path = tmp_path / "devpi.yml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"^(configfile {path}: )?option {word}:") as info:
        build_config({}, str(path), environ={})
    assert "\n" not in str(info.value)


def test_help_names_the_replication_options():
    text = str(ServerOptions())
    for option in [
        "--role", "--primary-url", "--master-url", "--replica-max-retries", "--replica-file-search-path",
        "--hard-links", "--file-replication-threads", "--file-replication-skip-indexes",
        "--proxy-timeout", "--replica-cert",
    ]:  # fmt: skip
        assert option in text
    assert "not implemented" not in text


def test_config_file_and_precedence(tmp_path, monkeypatch):
    path = tmp_path / "devpi.yml"
    path.write_text(
        "devpi-server:\n  serverdir: /srv/from-file\n  port: 4001\n"
        "  offline-mode: yes\n  restrict-modify: root\n"
    )
    monkeypatch.setenv("DEVPISERVER_PORT", "4002")
    config = parse("-c", str(path), "--restrict-modify", "alice")
    assert config.serverdir == "/srv/from-file"
    assert config.port == 4002  # environment beats the file
    assert config.offline_mode is True
    assert config.restrict_modify == "alice"  # command line beats both


@pytest.mark.parametrize(
    "text, word",
    [
        ("devpi-server:\n  nonsense: 1\n", "nonsense"),
        ("other:\n  port: 1\n", "other"),
        ("devpi-server: [\n", "YAML"),
        ("devpi-server:\n  port: [1]\n", "port"),
        ("devpi-server:\n  debug: perhaps\n", "debug"),
    ],
)
def test_bad_config_file(tmp_path, text, word):
    path = tmp_path / "devpi.yml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=word):
        build_config({}, str(path), environ={})


def test_config_file_uses_safe_loader(tmp_path):
    path = tmp_path / "devpi.yml"
    path.write_text("devpi-server:\n  host: !!python/object/apply:os.getcwd []\n")
    with pytest.raises(ConfigError, match="YAML"):
        build_config({}, str(path), environ={})


# -- default upstream --------------------------------------------------------


def test_pip_index_url_from_environment():
    assert pipconfig.default_mirror_url({"PIP_INDEX_URL": "http://127.0.0.1:7/simple/"}) == (
        "http://127.0.0.1:7/simple/"
    )


def test_pip_index_url_from_pip_config_file(tmp_path):
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nindex-url = http://127.0.0.1:8/simple/\n")
    environ = {"PIP_CONFIG_FILE": str(conf), "XDG_CONFIG_DIRS": str(tmp_path / "none")}
    assert pipconfig.default_mirror_url(environ) == "http://127.0.0.1:8/simple/"


def test_pip_config_files_in_pips_order(tmp_path):
    """
    Global (XDG_CONFIG_DIRS), then user (XDG_CONFIG_HOME), then
    PIP_CONFIG_FILE: later files win, and [install] over [global].
    """
    (tmp_path / "etc" / "pip").mkdir(parents=True)
    (tmp_path / "etc" / "pip" / "pip.conf").write_text("[global]\nindex-url = http://127.0.0.1:1/simple/\n")
    environ = {"XDG_CONFIG_DIRS": str(tmp_path / "etc"), "XDG_CONFIG_HOME": str(tmp_path / "home")}
    assert pipconfig.default_mirror_url(environ) == "http://127.0.0.1:1/simple/"
    (tmp_path / "home" / "pip").mkdir(parents=True)
    (tmp_path / "home" / "pip" / "pip.conf").write_text(
        "[install]\nindex-url = http://127.0.0.1:3/simple/\n[global]\nindex-url = http://127.0.0.1:2/simple/\n"
    )
    assert pipconfig.default_mirror_url(environ) == "http://127.0.0.1:3/simple/"
    conf = tmp_path / "env.conf"
    conf.write_text("[global]\nindex-url = http://127.0.0.1:4/simple/\n")
    assert pipconfig.default_mirror_url({**environ, "PIP_CONFIG_FILE": str(conf)}) == (
        "http://127.0.0.1:4/simple/"
    )
    # PIP_INDEX_URL wins over every file.
    assert pipconfig.default_mirror_url(
        {**environ, "PIP_CONFIG_FILE": str(conf), "PIP_INDEX_URL": "http://127.0.0.1:5/simple/"}
    ) == ("http://127.0.0.1:5/simple/")


def test_pip_builtin_default_when_unconfigured(tmp_path):
    environ = {"PIP_CONFIG_FILE": os.devnull}
    url = pipconfig.default_mirror_url(environ)
    assert url == pipconfig.pip_default_index()
    assert url.startswith("https://") and url.endswith("/simple")


# -- initialisation -----------------------------------------------------------


def test_initialize(tmp_path):
    config = ServerConfig(
        serverdir=str(tmp_path / "s"),
        mirror_url="http://127.0.0.1:9/simple/",
        root_passwd="pw",
    )
    lines = initialize(config, hasher=fast_hasher())
    assert any("root/pypi" in line for line in lines)
    assert len(read_nodeinfo(config.serverdir)["uuid"]) == 32
    mode = stat.S_IMODE(os.stat(config.secret_path).st_mode)
    assert mode == 0o600
    storage = open_storage(config.serverdir)
    root = storage.get("user/root")
    assert fast_hasher().verify(root["pwhash"], "pw")
    assert root["indexes"]["pypi"] == {
        "type": "mirror",
        "volatile": False,
        "title": "PyPI",
        "mirror_url": "http://127.0.0.1:9/simple/",
    }
    storage.close()
    with pytest.raises(AlreadyInitialized):
        initialize(config, hasher=fast_hasher())


def test_cli_init(tmp_path, capsys):
    serverdir = str(tmp_path / "s")
    pwhash = fast_hasher().hash("x")
    assert cli_main(["init", "--serverdir", serverdir, "--no-root-pypi", "--root-passwd-hash", pwhash]) == 0
    assert "created user root" in capsys.readouterr().out
    storage = open_storage(serverdir)
    assert storage.get("user/root")["indexes"] == {}
    assert storage.get("user/root")["pwhash"] == pwhash
    storage.close()
    assert cli_main(["init", "--serverdir", serverdir]) == 1
    assert "already initialised" in capsys.readouterr().err


def test_cli_init_warns_about_empty_root_password(tmp_path, capsys):
    serverdir = str(tmp_path / "s")
    assert cli_main(["init", "--serverdir", serverdir, "--no-root-pypi"]) == 0
    assert "empty password" in capsys.readouterr().out
    assert json.loads((tmp_path / "s" / ".nodeinfo").read_text())["role"] == "standalone"


def test_initialize_records_the_role(tmp_path):
    config = ServerConfig(serverdir=str(tmp_path / "s"), no_root_pypi=True, role="primary")
    initialize(config, hasher=fast_hasher())
    assert read_nodeinfo(config.serverdir)["role"] == "primary"
