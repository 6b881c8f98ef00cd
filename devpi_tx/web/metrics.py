"""
What a server tells its operators: C{/+metrics} (Prometheus text format)
and C{/+health} (for load balancers).

Requests are counted on the request path with plain integers
(L{RequestStats}, one dictionary lookup and a few additions per request,
in L{DevpiSite.log}); everything else is counted where the work is done
(L{PageCache}, L{UpstreamHTTP}, L{MirrorPages}, L{MirrorFiles}, uploads)
and read only when C{/+metrics} is asked for, by L{DevpiCollector}.  The
collector is registered in a registry of the server's own (never
prometheus_client's global one), so servers in one process (tests) keep
their numbers apart.  C{prometheus_client}'s own counters take a lock per
increment; none is on the request path.
"""

from __future__ import annotations

import bisect
import collections
import os
import time

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry
from twisted.web.iweb import IRequest

from .. import __version__
from ..sizes import format_size
from .router import app
from .site import METHODS

#: Upper bounds of the latency buckets, in seconds.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_LE = tuple(repr(bound) for bound in BUCKETS) + ("+Inf",)
#: Kinds of uploads, shown from the start (at 0).
UPLOAD_KINDS = ("releasefile", "doczip", "toxresult")
#: The route label of requests no route answered (unknown paths, refusals).
UNROUTED = "(none)"


class _Series:
    """
    The requests of one (route, method): how many per status, their
    latencies (per bucket, not cumulative), and the bytes sent.
    """

    __slots__ = ("statuses", "buckets", "seconds", "sent")

    def __init__(self) -> None:
        self.statuses: dict[int, int] = {}
        self.buckets = [0] * (len(BUCKETS) + 1)
        self.seconds = 0.0
        self.sent = 0


class RequestStats:
    """
    Requests counted by route (see L{route_label}: shown as its URL
    pattern, the label's values are as few as the routes), method and
    status, with a latency histogram and the bytes sent.
    """

    def __init__(self) -> None:
        self.series: dict[tuple[object, bytes], _Series] = {}

    def observe(self, route: object, method: bytes, status: int, seconds: float, sent: int) -> None:
        if method not in METHODS:
            method = b"OTHER"  # refused with 501; any bytes would do
        series = self.series.get((route, method))
        if series is None:
            series = self.series[(route, method)] = _Series()
        statuses = series.statuses
        statuses[status] = statuses.get(status, 0) + 1
        series.buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
        series.seconds += seconds
        series.sent += sent


class ServerMetrics:
    """
    A server's counters that no other part keeps, the request statistics,
    and its registry (made when first scraped).
    """

    def __init__(self) -> None:
        self.requests = RequestStats()
        #: Uploaded files by kind (C{releasefile}, C{doczip}, C{toxresult}).
        self.uploads: collections.Counter[str] = collections.Counter(dict.fromkeys(UPLOAD_KINDS, 0))
        self.upload_bytes = 0
        self._registry: CollectorRegistry | None = None

    def uploaded(self, rel: str, size: int) -> None:
        self.uploads[rel] += 1
        self.upload_bytes += size

    def registry(self, context) -> CollectorRegistry:
        if self._registry is None:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(DevpiCollector(context))
            ProcessCollector(registry=registry)
            self._registry = registry
        return self._registry


def route_patterns() -> dict[tuple[str, tuple[str, ...]], str]:
    """
    The URL pattern of each route (an endpoint and its rule's arguments,
    sorted) as the route label shows it: the shortest of its rules
    (C{/<user>} for C{/<user>} and C{/<user>/}).
    """
    patterns: dict[tuple[str, tuple[str, ...]], str] = {}
    for rule in app.url_map.iter_rules():
        key = (rule.endpoint, tuple(sorted(rule.arguments)))
        if key not in patterns or len(rule.rule) < len(patterns[key]):
            patterns[key] = rule.rule
    return patterns


def route_label(route, patterns: dict) -> str:
    """
    The label of a request's C{devpi_route}: L{None} (no route answered
    it), a route as L{RoutedKlein} notes it, or a name.
    """
    if route is None:
        return UNROUTED
    if isinstance(route, tuple):
        endpoint, arguments = route
        return patterns.get((endpoint, tuple(sorted(arguments))), endpoint)
    return route


class DevpiCollector(Collector):
    """
    The server's metrics, read from its parts when scraped.
    """

    def __init__(self, context) -> None:
        self._ctx = context

    def collect(self):
        ctx = self._ctx
        yield from self._requests(ctx.metrics.requests)
        info = GaugeMetricFamily("devpi_info", "This server.", labels=["version", "role"])
        info.add_metric([__version__, ctx.config.effective_role], 1)
        yield info
        yield GaugeMetricFamily("devpi_serial", "The serial of the state.", value=ctx.storage.serial)
        cache = ctx.page_cache
        yield CounterMetricFamily(
            "devpi_page_cache_hits", "Rendered pages answered from memory.", value=cache.hits
        )
        yield CounterMetricFamily(
            "devpi_page_cache_misses", "Rendered pages not in memory (rendered).", value=cache.misses
        )
        yield GaugeMetricFamily("devpi_page_cache_bytes", "Bytes of rendered pages kept.", value=cache.size)
        upstream = CounterMetricFamily(
            "devpi_upstream_requests",
            "Requests to other servers (upstream indexes, their files, the primary) by outcome: "
            "the status class, timeout or error.",
            labels=["method", "outcome"],
        )
        for (method, outcome), count in sorted(ctx.http.outcomes.items()):
            upstream.add_metric([method, outcome], count)
        yield upstream
        pages = CounterMetricFamily(
            "devpi_mirror_page_fetches",
            "Mirrored project pages asked for upstream, by result (changed, unchanged, not_modified, "
            "not_found, error, older_serial, via_primary).",
            labels=["result"],
        )
        for result, count in sorted(ctx.mirrors.fetches.items()):
            pages.add_metric([result], count)
        yield pages
        files = ctx.mirror_files
        downloads = CounterMetricFamily(
            "devpi_mirror_file_downloads", "Mirrored files downloaded, by result.", labels=["result"]
        )
        for result, count in sorted(files.downloads.items()):
            downloads.add_metric([result], count)
        yield downloads
        yield CounterMetricFamily(
            "devpi_mirror_file_download_bytes", "Bytes of mirrored files stored.", value=files.download_bytes
        )
        uploads = CounterMetricFamily("devpi_uploads", "Files uploaded, by kind.", labels=["kind"])
        for kind, count in sorted(ctx.metrics.uploads.items()):
            uploads.add_metric([kind], count)
        yield uploads
        yield CounterMetricFamily(
            "devpi_upload_bytes", "Bytes of files uploaded.", value=ctx.metrics.upload_bytes
        )
        if ctx.mirror_cache is not None:
            yield from self._mirror_cache(ctx.mirror_cache)
        if ctx.replica is not None:
            yield from self._replica(ctx)

    @staticmethod
    def _requests(stats: RequestStats):
        patterns = route_patterns()
        requests = CounterMetricFamily(
            "devpi_http_requests",
            "Requests answered, by route (URL pattern), method and status.",
            labels=["route", "method", "status"],
        )
        latency = HistogramMetricFamily(
            "devpi_http_request_duration_seconds",
            "Time from a request's head to its answer's end, by route and method.",
            labels=["route", "method"],
        )
        sent = CounterMetricFamily(
            "devpi_http_response_bytes", "Bytes of answers' bodies sent, by route.", labels=["route"]
        )
        sent_by_route: collections.Counter[str] = collections.Counter()
        for (endpoint, raw_method), series in sorted(stats.series.items(), key=lambda item: repr(item[0])):
            route = route_label(endpoint, patterns)
            method = raw_method.decode("ascii")
            for status, count in sorted(series.statuses.items()):
                requests.add_metric([route, method, str(status)], count)
            cumulative, total = [], 0
            for le, count in zip(_LE, series.buckets, strict=True):
                total += count
                cumulative.append((le, total))
            latency.add_metric([route, method], cumulative, series.seconds)
            sent_by_route[route] += series.sent
        for route, count in sorted(sent_by_route.items()):
            sent.add_metric([route], count)
        return requests, latency, sent

    @staticmethod
    def _mirror_cache(cache):
        yield GaugeMetricFamily(
            "devpi_mirror_cache_bytes", "Bytes of mirrored files stored (each blob once).", value=cache.size
        )
        yield GaugeMetricFamily(
            "devpi_mirror_cache_limit_bytes", "The bound on them (--mirror-cache-size).", value=cache.limit
        )
        yield GaugeMetricFamily("devpi_mirror_cache_files", "Mirrored files stored.", value=len(cache))
        yield CounterMetricFamily(
            "devpi_mirror_cache_evictions",
            "Mirrored files evicted (to be fetched again when asked for).",
            value=cache.evictions,
        )
        yield CounterMetricFamily(
            "devpi_mirror_cache_evicted_bytes", "Bytes of disk freed by evictions.", value=cache.evicted_bytes
        )

    @staticmethod
    def _replica(ctx):
        from .api import replica_lag

        behind, seconds = replica_lag(ctx.replica.sync, ctx.storage.serial, time.time())
        if behind is not None:
            yield GaugeMetricFamily(
                "devpi_replica_serials_behind", "Serials the primary has that this replica has not.", behind
            )
        if seconds is not None:
            yield GaugeMetricFamily(
                "devpi_replica_lag_seconds",
                "Seconds since this replica last had the primary's serial (0 while it has it).",
                seconds,
            )


def free_space(path: str) -> tuple[int, int]:
    """
    Bytes free (for an unprivileged user) and in all on the disk of C{path}.
    """
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


class OpsRoutes:
    """
    Mixin with C{/+metrics} and C{/+health}.
    """

    @app.route("/+metrics", methods=["GET"])
    def metrics(self, request: IRequest):
        if self.ctx.config.no_metrics:
            return _text(request, 404, "metrics are off (--no-metrics)\n")
        body = generate_latest(self.ctx.metrics.registry(self.ctx))
        request.setHeader("Content-Type", CONTENT_TYPE_LATEST)
        request.setHeader("Cache-Control", "no-store")
        return body

    @app.route("/+health", methods=["GET", "HEAD"])
    def health(self, request: IRequest):
        """
        200 when the state can be read and the server directory's disk has
        more than C{--min-free-space} free; else 503 with one line saying why.
        """
        problem = self.health_problem()
        if problem is not None:
            return _text(request, 503, f"unhealthy: {problem}\n")
        return _text(request, 200, "ok\n")

    def health_problem(self) -> str | None:
        config = self.ctx.config
        try:
            # A read that reaches the SQLite file (a range scan of no keys).
            self.ctx.storage.keys("+health/")
        except Exception as exc:
            return f"the state cannot be read ({exc.__class__.__name__}: {exc})"
        try:
            free, total = free_space(config.serverdir)
        except OSError as exc:
            return f"the server directory cannot be examined ({exc.strerror})"
        least_bytes, least_share = config.min_free_space
        least = least_bytes or least_share * total
        if free < least:
            share = f"{100 * least_share:g}% of the disk, " if least_share else ""
            return (
                f"{format_size(free)} free on the disk of {config.serverdir}, "
                f"below the threshold ({share}{format_size(least)}; --min-free-space)"
            )
        return None


def _text(request: IRequest, status: int, text: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader("Content-Type", "text/plain; charset=utf-8")
    request.setHeader("Cache-Control", "no-store")
    return text.encode("utf-8")
