"""
The simple API of an index (PEP 503 HTML and PEP 691 JSON): the project
list, project pages over the index's chain, and the redirects installers
expect.  Pages are rendered by L{devpi_tx.web.simple} and kept in the
L{PageCache} until a commit touches what they show; the installer fast
path (L{devpi_tx.web.installer}) calls C{simple_project_page} directly.
"""

from __future__ import annotations

from functools import partial

from packaging.utils import canonicalize_name
from twisted.internet.defer import ensureDeferred
from twisted.web.iweb import IRequest

from ..mirror.pages import MirrorUnavailable
from ..model import stages, typefilters
from ..model.names_index import SortedNames
from . import simple
from .listpages import merged_names
from .namepages import list_page
from .pagecache import Page
from .render import error
from .router import app
from .stagehelpers import StageHelpers

#: Project lists of more names than this are rendered in a worker thread
#: (about 1 ms of the reactor's time per thousand names otherwise).
THREADED_LIST = 5000


def _list_page(fmt: str, stage: str, sources, keep=None) -> Page:
    """
    A project list page from C{sources} (lists of names, or list files).

    @param keep: the index type's filter over the names, if it has one
        (C{names -> flags}).
    """
    groups = [(name, list(names)) for name, names in merged_names(sources)]
    if keep is not None:
        every = [name for _, names in groups for name in names]
        flags = keep(every)
        if flags is not None:
            dropped = {name for name, kept in zip(every, flags, strict=True) if not kept}
            groups = [(stage_, [n for n in names if n not in dropped]) for stage_, names in groups]
    body = simple.render_project_list(fmt, stage, groups)
    return Page(body, simple.etag_for(body), fmt)


class SimpleRoutes(StageHelpers):
    """
    Mixin with the routes under C{/<user>/<index>/+simple/}.
    """

    def _absolute_base(self, request: IRequest) -> str | None:
        if self.ctx.config.absolute_urls or request.getHeader("x-devpi-absolute-urls") is not None:
            return self.outside_url(request)
        return None

    def _send_page(self, request: IRequest, page: Page) -> bytes:
        request.setHeader("Vary", "Accept, User-Agent")
        request.setHeader("ETag", page.etag)
        request.setHeader("Content-Type", simple.content_type_for(page.fmt))
        if simple.not_modified(request, page.etag):
            request.setResponseCode(304)
            return b""
        request.setHeader("Content-Length", str(len(page.body)))
        return page.body

    def simple_list(self, request: IRequest, user: str, index: str) -> bytes:
        self._stage(user, index)
        try:
            fmt = simple.choose_format(request)
        except simple.NotAcceptable as exc:
            return error(request, 406, str(exc))
        stage = f"{user}/{index}"
        key = (stage, None, fmt)
        page = self.ctx.page_cache.get(key)
        if page is None:
            sources = self.ctx.list_sources(stage)
            config = self._stage(user, index)
            customizer = self.ctx.registry.shown_by(config)
            if customizer.filters and customizer.projects_filter(config, []) is not None:
                # The index's type filters the names: all of them are read
                # and filtered by a worker thread.
                keep = partial(customizer.projects_filter, config)
                return ensureDeferred(self._threaded_list(request, key, stage, fmt, sources, keep))
            if len(sources) == 1 and isinstance(sources[0][1], SortedNames):
                # The index's own names only: put together from pieces.
                page = list_page(fmt, stage, sources[0][1])
                self.ctx.page_cache.put(key, page)
                return self._send_page(request, page)
            if any(isinstance(names, str) for _, names in sources):
                # An upstream's list: written to disk by a thread.
                return ensureDeferred(self._large_list(request, stage, fmt, sources))
            if sum(len(names) for _, names in sources) > THREADED_LIST:
                # Many names: rendered by a worker thread, not on the reactor.
                return ensureDeferred(self._threaded_list(request, key, stage, fmt, sources))
            page = _list_page(fmt, stage, sources)
            self.ctx.page_cache.put(key, page)
        return self._send_page(request, page)

    async def _threaded_list(
        self, request: IRequest, key: tuple, stage: str, fmt: str, sources, keep=None
    ) -> bytes:
        cache = self.ctx.page_cache
        generation = cache.generation
        # The thread gets its own copies: the names index changes with the
        # next commit, on the reactor, while the thread reads.
        sources = [(name, names if isinstance(names, str) else list(names)) for name, names in sources]
        page = await self.ctx.run_in_thread(_list_page, fmt, stage, sources, keep)
        if cache.generation == generation:
            # No list was dropped meanwhile: the page is still what it shows.
            cache.put(key, page)
        return self._send_page(request, page)

    async def _large_list(self, request: IRequest, stage: str, fmt: str, sources):
        rendered = await self.ctx.list_pages.get(stage, fmt, sources)
        request.setHeader("Vary", "Accept, User-Agent")
        return rendered.serve(request, simple.content_type_for(fmt))

    def simple_project(self, request: IRequest, user: str, index: str, project: str):
        """
        A project page: answered at once when every mirror it draws on is
        fresh (the common case, kept free of coroutine machinery), else
        once those mirrors have been asked.
        """
        self._stage(user, index)
        try:
            fmt = simple.choose_format(request)
        except simple.NotAcceptable as exc:
            return error(request, 406, str(exc))
        stage = f"{user}/{index}"
        name = canonicalize_name(project)
        if all(self.ctx.mirrors.is_fresh(m, name) for m in self._consulted_mirrors(stage, name)):
            return self._project_page(request, stage, name, project, fmt)
        return ensureDeferred(self._refreshed_project_page(request, stage, name, project, fmt))

    async def _refreshed_project_page(
        self, request: IRequest, stage: str, name: str, project: str, fmt: str
    ) -> bytes:
        try:
            warnings = await self._refresh_mirrors(stage, name)
        except MirrorUnavailable as exc:
            return error(request, exc.status, str(exc))
        for warning in warnings:
            request.setHeader("X-Devpi-Mirror-Warning", warning.encode("latin-1", "replace"))
        return self._project_page(request, stage, name, project, fmt)

    def _project_page(self, request: IRequest, stage: str, name: str, project: str, fmt: str) -> bytes:
        page_dir = request.path.decode("utf-8", "replace")
        if not page_dir.endswith("/"):
            page_dir = page_dir.rsplit("/", 1)[0] + "/"
        absolute = self._absolute_base(request)
        key = (stage, name, fmt, page_dir, absolute)
        page = self.ctx.page_cache.get(key)
        if page is None:
            contributions = stages.project_contributions(
                self.ctx.storage,
                self._plan(stage, name),
                name,
                self.ctx.mirror_links,
                own_versions=self.ctx.versions.entries,
            )
            order = self._resolution_order(stage)
            shown_by = self.ctx.registry.shown_by
            expiry = typefilters.Expiry()
            contributions = typefilters.filter_contributions(
                self.ctx.storage, order, name, contributions, shown_by, expiry
            )
            if not any(c.links or c.versions for c in contributions):
                return error(request, 404, f"no project {project!r} on index {stage} or its bases")
            body = simple.render_project(fmt, stage, name, contributions, page_dir, absolute)
            page = Page(body, simple.etag_for(body), fmt, expiry.at)
            self.ctx.page_cache.put(key, page)
        return self._send_page(request, page)

    def _normalised_redirect(self, request: IRequest, project: str, slash: bool) -> bytes | None:
        name = canonicalize_name(project)
        if name == project and slash:
            return None
        path = request.path.decode("utf-8", "replace")
        head = path.rstrip("/").rsplit("/", 1)[0]
        target = f"{head}/{name}/"
        if request.uri.find(b"?") >= 0:
            target += "?" + request.uri.split(b"?", 1)[1].decode("latin-1")
        request.setResponseCode(302)
        request.setHeader("Location", target)
        request.setHeader("Vary", "Accept, User-Agent")
        return b""

    @app.route("/<user>/<index>/+simple", methods=["GET", "HEAD"])
    def simple_root_noslash(self, request: IRequest, user: str, index: str):
        if simple.is_installer(request):
            return self.simple_list(request, user, index)
        request.setResponseCode(302)
        request.setHeader("Location", f"/{user}/{index}/+simple/")
        request.setHeader("Vary", "User-Agent")
        return b""

    @app.route("/<user>/<index>/+simple/", methods=["GET", "HEAD"])
    def simple_root(self, request: IRequest, user: str, index: str):
        return self.simple_list(request, user, index)

    @app.route("/<user>/<index>/+simple/<project>", methods=["GET", "HEAD"])
    def simple_project_noslash(self, request: IRequest, user: str, index: str, project: str):
        if canonicalize_name(project) == project and simple.is_installer(request):
            return self.simple_project(request, user, index, project)
        return self._normalised_redirect(request, project, slash=False)

    @app.route("/<user>/<index>/+simple/<project>/", methods=["GET", "HEAD"])
    def simple_project_page(self, request: IRequest, user: str, index: str, project: str):
        redirect = self._normalised_redirect(request, project, slash=True)
        if redirect is not None:
            return redirect
        return self.simple_project(request, user, index, project)

    @app.route("/<user>/<index>/+simple/<project>/refresh", methods=["POST"])
    def simple_refresh(self, request: IRequest, user: str, index: str, project: str):
        self._stage(user, index)
        self.ctx.refresh_project(f"{user}/{index}", canonicalize_name(project))
        request.setResponseCode(302)
        request.setHeader("Location", f"/{user}/{index}/+simple/{canonicalize_name(project)}/")
        return b""
