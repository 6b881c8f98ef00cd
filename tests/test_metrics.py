"""
/+metrics (Prometheus text format), /+health, and the logging options.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
from types import SimpleNamespace

import attrs
import pytest
from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.logger import Logger, globalLogPublisher

from devpi_tx.mirror.http import UpstreamHTTP
from devpi_tx.service import _configure_stdlib_logging, build_context
from devpi_tx.web.metrics import BUCKETS, DevpiCollector, RequestStats

from .conftest import Client, synchronous, synchronous_passwords
from .distfiles import make_wheel, upload_form
from .fakeupstream import Release

PIP_ACCEPT = "application/vnd.pypi.simple.v1+json"
SIMPLE_ROUTE = "/<user>/<index>/+simple/<project>/"


def scrape(client) -> dict[tuple[str, tuple], float]:
    """
    The samples of /+metrics, by (name, sorted labels).
    """
    answer = client.get("/+metrics", accept=None)
    assert answer.code == 200, answer.body
    assert answer.header("Content-Type").startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(answer.body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def hello(upstream):
    filename, data = make_wheel("hello", "1.0")
    upstream.add("hello", Release(filename, data), serial=5)
    return filename, data


def test_requests_are_counted_by_route_pattern_method_and_status(client):
    for project in ("a", "b", "c"):
        client.get(f"/root/pypi/+simple/{project}/", accept=PIP_ACCEPT)
    client.get("/+api")
    client.get("/no/such/thing/here/at/all/anywhere")
    samples = scrape(client)
    # Three projects, one series: the route's pattern, not the path.
    assert value(samples, "devpi_http_requests_total", route=SIMPLE_ROUTE, method="GET", status="404") == 3
    assert value(samples, "devpi_http_requests_total", route="/+api", method="GET", status="200") == 1
    assert value(samples, "devpi_http_requests_total", route="(none)", method="GET", status="404") == 1
    assert not any("+simple/a/" in str(labels) for _, labels in samples)
    count = value(samples, "devpi_http_request_duration_seconds_count", route=SIMPLE_ROUTE, method="GET")
    infinite = value(
        samples, "devpi_http_request_duration_seconds_bucket", route=SIMPLE_ROUTE, method="GET", le="+Inf"
    )
    assert count == infinite == 3
    assert value(samples, "devpi_http_response_bytes_total", route="/+api") > 0


def test_the_installer_fast_path_and_klein_give_one_label(client, hello):
    client.get("/root/pypi/+simple/hello/", accept=PIP_ACCEPT)  # the fast path
    client.get("/root/pypi/+simple/hello/", accept=PIP_ACCEPT, headers={"X-Devpi-Test": "1"})
    client.request("HEAD", "/root/pypi/+simple/hello/", accept=PIP_ACCEPT)
    samples = scrape(client)
    assert value(samples, "devpi_http_requests_total", route=SIMPLE_ROUTE, method="GET", status="200") == 2
    assert value(samples, "devpi_http_requests_total", route=SIMPLE_ROUTE, method="HEAD", status="200") == 1


def test_latency_buckets_are_cumulative():
    stats = RequestStats()
    for seconds in (0.0005, 0.001, 0.003, 0.2, 100.0):
        stats.observe(("status", ()), b"GET", 200, seconds, 10)
    stats.observe(None, b"BREW", 501, 0.0, 0)
    samples = {}
    for family in DevpiCollector._requests(stats):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    bucket = "devpi_http_request_duration_seconds_bucket"
    assert value(samples, bucket, route="/+status", method="GET", le="0.001") == 2
    assert value(samples, bucket, route="/+status", method="GET", le="0.005") == 3
    assert value(samples, bucket, route="/+status", method="GET", le=repr(BUCKETS[-1])) == 4
    assert value(samples, bucket, route="/+status", method="GET", le="+Inf") == 5
    assert value(samples, "devpi_http_requests_total", route="(none)", method="OTHER", status="501") == 1


def test_caches_upstream_files_uploads_and_serial(client, context, hello, upstream, alice):
    filename, data = hello
    base = "/root/pypi/+simple/hello/"
    for _ in range(3):
        page = client.get(base, accept=PIP_ACCEPT)
    url = posixpath.normpath(posixpath.join(base, page.json["files"][0]["url"]))
    assert client.get(url, accept=None).body == data
    client.get("/root/pypi/+simple/nothere/", accept=PIP_ACCEPT)
    upstream.fail_status = 503
    client.get("/root/pypi/+simple/broken/", accept=PIP_ACCEPT)
    client.request("PUT", "/alice/dev", {"bases": ""}, headers=alice)
    sdist = b"an sdist" * 100
    content_type, body = upload_form("pkg", "1.0", "pkg-1.0.tar.gz", sdist)
    answer = client.request(
        "POST", "/alice/dev/", raw=body, headers={"Content-Type": content_type, **alice}, accept=None
    )
    assert answer.code == 200, answer.body
    samples = scrape(client)
    assert value(samples, "devpi_page_cache_hits_total") >= 2
    assert value(samples, "devpi_page_cache_misses_total") >= 1
    assert value(samples, "devpi_mirror_page_fetches_total", result="changed") == 1
    assert value(samples, "devpi_mirror_page_fetches_total", result="not_found") == 1
    assert value(samples, "devpi_mirror_page_fetches_total", result="error") == 1
    assert value(samples, "devpi_upstream_requests_total", method="GET", outcome="2xx") == 2  # page, file
    assert value(samples, "devpi_upstream_requests_total", method="GET", outcome="4xx") == 1
    assert value(samples, "devpi_upstream_requests_total", method="GET", outcome="5xx") >= 1
    assert value(samples, "devpi_mirror_file_downloads_total", result="ok") == 1
    assert value(samples, "devpi_mirror_file_download_bytes_total") == len(data)
    assert value(samples, "devpi_uploads_total", kind="releasefile") == 1
    assert value(samples, "devpi_upload_bytes_total") == len(sdist)
    assert value(samples, "devpi_serial") == context.storage.serial
    assert value(samples, "devpi_info", version=samples and _version(), role="standalone") == 1
    assert ("devpi_replica_lag_seconds", ()) not in samples
    assert ("devpi_mirror_cache_bytes", ()) not in samples
    assert any(name.startswith("process_") for name, _ in samples)


def _version() -> str:
    from devpi_tx import __version__

    return __version__


def test_each_server_has_its_own_registry(client, config, upstream, tmp_path):
    other_config = attrs.evolve(config, serverdir=str(tmp_path / "other"))
    other = build_context(
        other_config,
        passwords=synchronous_passwords(),
        run_in_thread=synchronous,
        upstream_http=UpstreamHTTP(StubTreq(upstream), reactor),
        reactor=reactor,
    )
    try:
        other_client = Client(other)
        for _ in range(3):
            client.get("/+api")
        other_client.get("/+api")
        mine, theirs = scrape(client), scrape(other_client)
        assert value(mine, "devpi_http_requests_total", route="/+api", method="GET", status="200") == 3
        assert value(theirs, "devpi_http_requests_total", route="/+api", method="GET", status="200") == 1
    finally:
        other.close()


def test_metrics_can_be_turned_off(config, upstream):
    context = build_context(
        attrs.evolve(config, no_metrics=True),
        passwords=synchronous_passwords(),
        run_in_thread=synchronous,
        upstream_http=UpstreamHTTP(StubTreq(upstream), reactor),
        reactor=reactor,
    )
    try:
        client = Client(context)
        answer = client.get("/+metrics", accept=None)
        assert answer.code == 404 and b"--no-metrics" in answer.body
        assert client.site.request_stats is None
        assert context.metrics.requests.series == {}
    finally:
        context.close()


def test_replica_lag_is_shown_on_a_replica(context):
    sync = SimpleNamespace(primary_serial=context.storage.serial + 4, in_sync_at=100.0)
    replica = attrs.evolve(context, replica=SimpleNamespace(sync=sync))
    samples = {}
    for family in DevpiCollector(replica).collect():
        for sample in family.samples:
            samples[sample.name] = sample.value
    assert samples["devpi_replica_serials_behind"] == 4
    assert samples["devpi_replica_lag_seconds"] > 1_000_000  # since 1970 + 100 s


# -- /+health ---------------------------------------------------------------------


def test_health_is_ok(client):
    answer = client.get("/+health", accept=None)
    assert (answer.code, answer.body) == (200, b"ok\n")
    assert answer.header("Content-Type") == "text/plain; charset=utf-8"
    assert client.request("HEAD", "/+health", accept=None).code == 200


def test_health_fails_below_the_free_space_threshold(client, context):
    context.config = attrs.evolve(context.config, min_free_space=(0, 1.0))  # 100 %: never met
    answer = client.get("/+health", accept=None)
    assert answer.code == 503
    line = answer.body.decode()
    assert line.count("\n") == 1 and line.startswith("unhealthy: ")
    assert "free on the disk of" in line and "100% of the disk" in line and "--min-free-space" in line
    context.config = attrs.evolve(context.config, min_free_space=(1 << 60, 0.0))
    assert "1048576 TiB" in client.get("/+health", accept=None).body.decode()


def test_health_fails_when_the_state_cannot_be_read(client, context):
    context.storage._db.close()
    answer = client.get("/+health", accept=None)
    assert answer.code == 503
    assert answer.body.decode().startswith("unhealthy: the state cannot be read (ProgrammingError")


# -- logging ------------------------------------------------------------------------


def test_logger_cfg_yaml_configures_stdlib_logging(tmp_path):
    path = tmp_path / "logging.yml"
    out = tmp_path / "out.log"
    path.write_text(
        "version: 1\n"
        "handlers:\n"
        f"  file: {{class: logging.FileHandler, filename: {json.dumps(str(out))}}}\n"
        "loggers:\n"
        "  devpi_tx: {handlers: [file], level: INFO}\n"
        "disable_existing_loggers: false\n"
    )
    observer = _configure_stdlib_logging(str(path))
    try:
        Logger(namespace="devpi_tx.test").info("hello {who}", who="from the test")
    finally:
        globalLogPublisher.removeObserver(observer)
        for handler in logging.getLogger("devpi_tx").handlers:
            handler.close()
            logging.getLogger("devpi_tx").removeHandler(handler)
    assert "hello from the test" in out.read_text()


def test_logger_cfg_is_read_with_the_safe_loader(tmp_path):
    import yaml

    path = tmp_path / "logging.yml"
    path.write_text("version: !!python/object/apply:os.getpid []\n")
    with pytest.raises(yaml.constructor.ConstructorError):
        _configure_stdlib_logging(str(path))


def test_the_sha_of_a_stored_file_is_not_a_label(client, hello):
    base = "/root/pypi/+simple/hello/"
    page = client.get(base, accept=PIP_ACCEPT)
    client.get(posixpath.normpath(posixpath.join(base, page.json["files"][0]["url"])), accept=None)
    sha = hashlib.sha256(hello[1]).hexdigest()
    body = client.get("/+metrics", accept=None).body.decode()
    assert sha[:13] not in body and 'route="/<user>/<index>/+f/<path:relpath>"' in body
