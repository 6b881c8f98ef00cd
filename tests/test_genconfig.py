"""
C{devpi-tx gen-config}: the files it writes carry the server's options where
they must, nginx and systemd accept them (when installed here), the
examples in C{deployment/} are what it writes now, and the command lines
it writes start a server: the systemd unit's through socket activation,
the supervisor program's behind the generated nginx site.
"""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from devpi_tx.cli import genconfig
from devpi_tx.cli.main import main as cli_main

from .distfiles import make_wheel, upload_form
from .serverproc import REPO_ROOT, UNREACHABLE_MIRROR, ServerProcess, free_port, server_env

DEPLOYMENT = REPO_ROOT / "deployment"


def generate(tmp_path: Path, *args: str, twistd: str | None = None) -> dict[str, str]:
    """
    Run C{devpi-tx gen-config} into C{tmp_path/out}; the files by name.
    """
    out = tmp_path / "out"
    argv = ["gen-config", "--output", str(out), "--twistd", twistd or "/opt/devpi-tx/bin/twistd", *args]
    assert cli_main(argv) == 0
    return {path.name: path.read_text() for path in sorted(out.iterdir())}


def exec_start(unit: str) -> list[str]:
    """
    The words of a unit's C{ExecStart=} (our quoting is a subset of shell's).
    """
    (line,) = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    return shlex.split(line[len("ExecStart=") :].replace("%%", "%").replace("$$", "$"))


def supervisor_command(text: str, name: str = "devpi-tx") -> list[str]:
    parser = configparser.RawConfigParser()
    parser.read_string(text)
    return shlex.split(parser[f"program:{name}"]["command"].replace("%%", "%"))


def option(words: list[str], name: str) -> str:
    return words[words.index(name) + 1]


def test_files_carry_the_server_options(tmp_path: Path) -> None:
    files = generate(
        tmp_path,
        "--serverdir=/srv/pkgs",
        "--port=4242",
        "--outside-url=https://pkgs.example.com",
        "--max-request-body-size=314572800",
        "--access-log=/var/log/pkgs/access.log",
        "--request-timeout=12",
        "--offline-mode",
        "--user=pkgs",
    )
    assert sorted(files) == [
        "devpi-tx.service",
        "logrotate-devpi-tx",
        "nginx-devpi-tx.conf",
        "supervisor-devpi-tx.conf",
    ]
    nginx = files["nginx-devpi-tx.conf"]
    assert "server 127.0.0.1:4242;" in nginx
    assert "server_name pkgs.example.com;" in nginx
    assert "proxy_set_header X-Outside-Url https://pkgs.example.com;" in nginx
    assert "client_max_body_size 300m;" in nginx
    assert "proxy_request_buffering off;" in nginx
    assert "listen 443 ssl;" in nginx and "return 301 https://$host$request_uri;" in nginx
    assert "ssl_certificate /etc/ssl/certs/pkgs.example.com.pem;" in nginx
    # The changelog stream holds 30 s: nginx waits longer, and does not buffer it.
    changelog = nginx[nginx.index("location ^~ /+changelog/") :]
    changelog = changelog[: changelog.index("}")]
    assert "proxy_buffering off;" in changelog
    timeout = int(re.search(r"proxy_read_timeout (\d+)s;", changelog).group(1))
    assert timeout > 30
    assert int(re.search(r"^    proxy_read_timeout (\d+)s;", nginx, re.M).group(1)) >= 60
    assert "application/vnd.pypi.simple.v1+json" in nginx and "gzip on;" in nginx

    service = files["devpi-tx.service"]
    words = exec_start(service)
    assert words[:5] == ["/opt/devpi-tx/bin/twistd", "-n", "--pidfile=", "devpi", "--serverdir"]
    assert option(words, "--serverdir") == "/srv/pkgs"
    assert option(words, "--port") == "4242"
    assert option(words, "--outside-url") == "https://pkgs.example.com"
    assert option(words, "--request-timeout") == "12.0"
    assert "--offline-mode" in words
    assert "User=pkgs" in service and "Restart=on-failure" in service
    assert "RestartPreventExitStatus=3" in service
    assert "LogsDirectory=pkgs" in service
    assert supervisor_command(files["supervisor-devpi-tx.conf"]) == words
    assert "user = pkgs" in files["supervisor-devpi-tx.conf"]
    logrotate = files["logrotate-devpi-tx"]
    assert logrotate.index("/var/log/pkgs/access.log {") < logrotate.index("copytruncate")
    assert "su pkgs pkgs" in logrotate


def test_environment_and_config_file_are_written_out(tmp_path: Path, monkeypatch) -> None:
    """
    The service will not see the environment or the current directory gen-config ran in.
    """
    configfile = tmp_path / "server.yml"
    configfile.write_text(
        "devpi-server:\n  outside-url: http://pkgs.example.com:8080/py\n  role: primary\n"
        "  root-passwd: sesame-b7\n"
    )
    monkeypatch.setenv("DEVPISERVER_PORT", "4343")
    monkeypatch.chdir(tmp_path)
    files = generate(tmp_path, "-c", str(configfile), "--serverdir=state", "--secretfile=secret")
    words = exec_start(files["devpi-tx.service"])
    assert option(words, "--port") == "4343"
    assert option(words, "--serverdir") == str(tmp_path / "state")
    assert option(words, "--secretfile") == str(tmp_path / "secret")
    assert option(words, "--role") == "primary"
    assert "-c" not in words
    nginx = files["nginx-devpi-tx.conf"]
    assert "listen 8080;" in nginx and "ssl" not in nginx
    assert "proxy_set_header X-Outside-Url http://pkgs.example.com:8080/py;" in nginx
    assert "location /py/ {" in nginx and "rewrite ^/py/(.*)$ /$1 break;" in nginx
    assert "logrotate-devpi-tx" not in files  # the access log goes to standard output
    # devpi-tx init's option, and a secret: not for a server's command line.
    assert not [name for name, text in files.items() if "sesame" in text]


def test_replica_and_defaults(tmp_path: Path) -> None:
    files = generate(tmp_path, "--primary-url=https://primary.example.com", "--proxy-timeout=100")
    words = exec_start(files["devpi-tx.service"])
    assert option(words, "--primary-url") == "https://primary.example.com"
    assert "--role" not in words  # a primary URL makes it a replica
    assert option(words, "--host") == "127.0.0.1" and option(words, "--port") == "3141"
    assert option(words, "--serverdir") == os.path.expanduser("~/.devpi-tx/server")
    nginx = files["nginx-devpi-tx.conf"]
    assert "proxy_read_timeout 130s;" in nginx  # above the wait for the primary
    assert "proxy_set_header X-Outside-Url $scheme://$http_host;" in nginx
    assert "server_name devpi.example.com;" in nginx


def test_socket_activation(tmp_path: Path) -> None:
    files = generate(tmp_path, "--serverdir=/srv/pkgs", "--host=::1", "--port=4444", "--socket-activation")
    assert "ListenStream=[::1]:4444" in files["devpi-tx.socket"]
    service = files["devpi-tx.service"]
    words = exec_start(service)
    assert option(words, "--listen") == "systemd:domain=INET6:index=0"
    assert "--host" not in words and "--port" not in words
    assert "Requires=devpi-tx.socket" in service
    assert "server [::1]:4444;" in files["nginx-devpi-tx.conf"]
    # supervisor has no sockets to hand over: it runs the plain command.
    assert option(supervisor_command(files["supervisor-devpi-tx.conf"]), "--port") == "4444"


def test_endpoints(tmp_path: Path) -> None:
    files = generate(
        tmp_path, "--listen=ssl:3443:privateKey=k.pem:certKey=c.pem", "--listen=unix:/run/devpi/sock"
    )
    assert "server unix:/run/devpi/sock;" in files["nginx-devpi-tx.conf"]
    words = exec_start(files["devpi-tx.service"])
    assert [w for i, w in enumerate(words) if i and words[i - 1] == "--listen"] == [
        "ssl:3443:privateKey=k.pem:certKey=c.pem",
        "unix:/run/devpi/sock",
    ]
    assert genconfig.parse_backend("tcp6:port=80:interface=fe80\\:\\:1").nginx_server == "[fe80::1]:80"
    assert genconfig.parse_backend("ssl:3443:privateKey=k.pem").kind == "ssl"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--listen=systemd:domain=INET:index=0"], "option listen"),
        (["--listen=ssl:3443:privateKey=k.pem", "--socket-activation"], "option socket-activation"),
        (["--outside-url=https://example.com/a b"], "option outside-url"),
        (["--port=abc"], "option port"),
        (["--name=a/b"], "option name"),
    ],
)
def test_refused(tmp_path: Path, capsys, args: list[str], message: str) -> None:
    assert cli_main(["gen-config", "--output", str(tmp_path / "out"), *args]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_quoting(tmp_path: Path) -> None:
    files = generate(tmp_path, "--serverdir=/srv/my pkgs %h", "--access-log=/var/log/my pkgs/a.log")
    words = exec_start(files["devpi-tx.service"])
    assert option(words, "--serverdir") == "/srv/my pkgs %h"
    assert '"/srv/my pkgs %%h"' in files["devpi-tx.service"]
    assert supervisor_command(files["supervisor-devpi-tx.conf"]) == words
    assert '"/var/log/my pkgs/a.log" {' in files["logrotate-devpi-tx"]


def test_stale_files_are_removed(tmp_path: Path) -> None:
    assert "devpi-tx.socket" in generate(tmp_path, "--socket-activation", "--access-log=/tmp/a.log")
    assert sorted(generate(tmp_path)) == [
        "devpi-tx.service",
        "nginx-devpi-tx.conf",
        "supervisor-devpi-tx.conf",
    ]


def example_commands() -> list[tuple[list[str], Path]]:
    """
    The C{devpi-tx gen-config} commands C{deployment/README.rst} says made
    its examples, and where each one's files are kept.
    """
    text = (DEPLOYMENT / "README.rst").read_text().replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        if line.strip().startswith("devpi-tx gen-config"):
            words = shlex.split(line)[2:]
            commands.append((words, DEPLOYMENT / option(words, "--output")))
    return commands


def test_deployment_examples_are_current(tmp_path: Path) -> None:
    commands = example_commands()
    assert len(commands) == 2
    for index, (words, kept) in enumerate(commands):
        out = tmp_path / str(index)
        words = [w if w != option(words, "--output") else str(out) for w in words]
        assert cli_main(["gen-config", *words]) == 0
        examples = [p for p in kept.iterdir() if p.is_file() and p.suffix != ".rst"]
        assert examples
        for example in examples:
            assert example.read_text() == (out / example.name).read_text(), f"{example} is stale"


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[str, str]:
    """
    A self-signed certificate and its key, which nginx loads to test a site.
    """
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pkgs.example.com")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return str(cert_path), str(key_path)


def nginx_prefix(tmp_path: Path, site: Path) -> Path:
    """
    An nginx prefix directory whose C{nginx.conf} includes C{site} as a
    distribution's C{http} block includes its sites.
    """
    prefix = tmp_path / "nginx"
    (prefix / "logs").mkdir(parents=True)
    (prefix / "nginx.conf").write_text(
        f"error_log {prefix}/logs/error.log;\npid {prefix}/nginx.pid;\n"
        f"events {{}}\nhttp {{\n    include {site};\n}}\n"
    )
    return prefix


needs_nginx = pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")


@needs_nginx
@pytest.mark.parametrize("outside", ["https://pkgs.example.com", "http://pkgs.example.com:8080/py/"])
def test_nginx_accepts_the_site(tmp_path: Path, tls_files: tuple[str, str], outside: str) -> None:
    cert, key = tls_files
    generate(
        tmp_path, f"--outside-url={outside}", f"--ssl-certificate={cert}", f"--ssl-certificate-key={key}"
    )
    prefix = nginx_prefix(tmp_path, tmp_path / "out" / "nginx-devpi-tx.conf")
    result = subprocess.run(
        ["nginx", "-t", "-p", str(prefix), "-c", str(prefix / "nginx.conf")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "[warn]" not in result.stderr and "[emerg]" not in result.stderr, result.stderr


def test_nginx_refuses_a_broken_site(tmp_path: Path) -> None:
    """
    The check above can fail: a site nginx cannot load is refused.
    """
    if shutil.which("nginx") is None:
        pytest.skip("nginx is not installed")
    generate(tmp_path)  # its certificate paths do not exist here
    prefix = nginx_prefix(tmp_path, tmp_path / "out" / "nginx-devpi-tx.conf")
    result = subprocess.run(
        ["nginx", "-t", "-p", str(prefix), "-c", str(prefix / "nginx.conf")], capture_output=True, text=True
    )
    assert result.returncode != 0 and "devpi.example.com.pem" in result.stderr


def systemd_verify(paths: list[Path]) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", "verify", *map(str, paths)], capture_output=True, text=True)


needs_systemd = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")


@needs_systemd
@pytest.mark.parametrize("socket", [False, True])
def test_systemd_accepts_the_units(tmp_path: Path, socket: bool) -> None:
    twistd = shutil.which("twistd") or genconfig.default_twistd()
    args = ["--access-log=/var/log/devpi-tx/access.log"] + (["--socket-activation"] if socket else [])
    files = generate(tmp_path, *args, twistd=twistd)
    units = [tmp_path / "out" / name for name in files if name.endswith((".service", ".socket"))]
    assert len(units) == (2 if socket else 1)
    result = systemd_verify(units)
    # systemd-analyze exits 0 for settings it ignores: any complaint counts.
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


@needs_systemd
def test_systemd_verify_can_fail(tmp_path: Path) -> None:
    files = generate(tmp_path, twistd=str(tmp_path / "no-twistd"))
    assert "devpi-tx.service" in files
    assert systemd_verify([tmp_path / "out" / "devpi-tx.service"]).returncode != 0


class CommandServer(ServerProcess):
    """
    A server run by a generated command line (twistd's path replaced by
    this environment's), optionally under C{systemd-socket-activate}.
    """

    def __init__(self, workdir: Path, command: list[str], port: int, socket: str | None = None) -> None:
        super().__init__(workdir, port=port)
        twistd = shutil.which("twistd") or genconfig.default_twistd()
        # systemd-socket-activate passes on no environment but what -E names;
        # Twisted adopts sockets only when they are named, as systemd names them.
        activate = ["systemd-socket-activate", "-l", socket, "--fdname=devpi-tx.socket"]
        activate += ["-E", f"PYTHONPATH={server_env()['PYTHONPATH']}"]
        self.command = ([] if socket is None else activate) + [twistd, *command[1:]]

    @property
    def args(self) -> list[str]:
        return self.command


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None, reason="no systemd-socket-activate")
def test_socket_activated_server_answers(tmp_path: Path) -> None:
    port = free_port()
    serverdir = tmp_path / "serverdir"
    files = generate(
        tmp_path,
        f"--serverdir={serverdir}",
        f"--port={port}",
        f"--mirror-url={UNREACHABLE_MIRROR}",
        "--socket-activation",
    )
    listen = re.search(r"^ListenStream=(.*)$", files["devpi-tx.socket"], re.M).group(1)
    assert listen == f"127.0.0.1:{port}"
    server = CommandServer(tmp_path, exec_start(files["devpi-tx.service"]), port, socket=listen)
    server.start()
    try:
        assert (
            json.loads(urllib.request.urlopen(server.url + "/+api", timeout=10).read())["type"] == "apiconfig"
        )
        assert "systemd:domain=INET:index=0" in server.log_text()
    finally:
        server.stop()


def request(url: str, data: bytes | None = None, method: str | None = None, headers=None) -> bytes:
    auth = {"Authorization": "Basic cm9vdDo="}  # root, empty password
    req = urllib.request.Request(url, data=data, method=method, headers={**auth, **(headers or {})})
    with urllib.request.urlopen(req, timeout=30) as response:
        return response.read()


@pytest.mark.e2e
@needs_nginx
def test_server_behind_the_generated_nginx(tmp_path: Path) -> None:
    """
    The supervisor program's command behind the nginx site, under a path:
    the outside URL reaches the server's links, an upload above nginx's
    default body limit passes, and the file comes back through C{+f}.
    """
    port, nginx_port = free_port(), free_port()
    outside = f"http://127.0.0.1:{nginx_port}/py"
    files = generate(
        tmp_path,
        f"--serverdir={tmp_path / 'serverdir'}",
        f"--port={port}",
        f"--outside-url={outside}",
        f"--mirror-url={UNREACHABLE_MIRROR}",
    )
    prefix = nginx_prefix(tmp_path, tmp_path / "out" / "nginx-devpi-tx.conf")
    server = CommandServer(tmp_path, supervisor_command(files["supervisor-devpi-tx.conf"]), port).start()
    nginx = subprocess.Popen(
        [
            "nginx",
            "-p",
            str(prefix),
            "-c",
            str(prefix / "nginx.conf"),
            "-g",
            "daemon off; master_process off;",
        ],
        env=server_env(),
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                api = json.loads(request(outside + "/+api"))
                break
            except OSError:
                assert nginx.poll() is None and time.monotonic() < deadline, "nginx did not answer"
                time.sleep(0.1)
        assert api["result"]["login"] == outside + "/+login"
        request(outside + "/root/dev", json.dumps({"bases": []}).encode(), "PUT")
        filename, wheel = make_wheel("bigpkg", "1.0", payload=os.urandom(3 * 1024 * 1024))
        content_type, body = upload_form("bigpkg", "1.0", filename, wheel)
        request(outside + "/root/dev/", body, "POST", {"Content-Type": content_type})
        page = json.loads(
            request(
                outside + "/root/dev/+simple/bigpkg/",
                headers={"Accept": "application/vnd.pypi.simple.v1+json"},
            )
        )
        (link,) = page["files"]
        url = urllib.parse.urljoin(outside + "/root/dev/+simple/bigpkg/", link["url"])
        assert url.startswith(outside + "/root/dev/+f/")
        assert hashlib.sha256(request(url)).hexdigest() == hashlib.sha256(wheel).hexdigest()
    finally:
        nginx.terminate()
        nginx.wait(10)
        server.stop()
