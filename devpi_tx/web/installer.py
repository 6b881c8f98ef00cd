"""
The root resource: the installer's and the uploader's requests, straight
to their handlers.

pip and uv ask for a project's simple page (C{GET /{user}/{index}/+simple/
{project}/}) for every requirement of every install; on a busy index it is
nearly all the traffic.  Klein's routing (binding a werkzeug map, matching,
two C{notifyFinish} Deferreds and error-handler chains per request) cost
about as much as the handler itself does with the page cached.  This
resource recognises that one path shape with a regular expression and
calls the same handler Klein would.  An upload (a multipart POST that the
site already streams into an upload receiver, its index known) goes to
its handler the same way.  Anything else, and any request the handler
raises for (so that Klein's error handlers answer it, the handler having
changed nothing), goes through Klein.
"""

from __future__ import annotations

import re

from twisted.internet.defer import ensureDeferred
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

#: Plain segments only: anything percent-encoded (or a leading "+")
#: is left to Klein, which decodes and reports it.
_PROJECT_PAGE = re.compile(rb"/([^/%+][^/%]*)/([^/%+][^/%]*)/\+simple/([^/%]+)/")
#: The routes Klein would have taken, as L{RoutedKlein} notes them.
_PROJECT_PAGE_ROUTE = ("simple_project_page", ("user", "index", "project"))
_UPLOAD_ROUTE = ("index_post", ("user", "index"))


class InstallerFastPath(Resource):
    isLeaf = True

    def __init__(self, klein_resource: Resource, routes) -> None:
        """
        @param klein_resource: the Klein app's resource, for everything else.
        @param routes: the object whose C{simple_project_page} and
            C{index_post} Klein routes project pages and uploads to.
        """
        super().__init__()
        self._klein = klein_resource
        self._routes = routes

    def render(self, request):
        if request.method in (b"GET", b"HEAD"):
            match = _PROJECT_PAGE.fullmatch(request.path)
            if match is not None:
                request.devpi_route = _PROJECT_PAGE_ROUTE  # the metrics' route label
                try:
                    user, index, project = (part.decode("utf-8") for part in match.groups())
                    result = self._routes.simple_project_page(request, user, index, project)
                except Exception:
                    return self._klein.render(request)
                if isinstance(result, bytes):
                    return _send(request, result)
                # Upstream is being asked: answer when it has.
                return _send_later(request, result)
        elif request.method == b"POST" and getattr(request, "devpi_upload", None) is not None:
            user, index = request.devpi_upload_index
            request.devpi_route = _UPLOAD_ROUTE
            return _send_later(request, ensureDeferred(self._routes.index_post(request, user, index)))
        return self._klein.render(request)


def _send_later(request, result):
    # Unless the client has gone away meanwhile.
    gone: list = []
    request.notifyFinish().addBoth(gone.append)
    result.addCallback(lambda body: None if gone else _send(request, body))
    result.addErrback(lambda failure: None if gone else request.processingFailed(failure))
    return NOT_DONE_YET


def _send(request, body: bytes):
    # As Klein sends a handler's bytes (Twisted drops the body of a HEAD).
    request.write(body)
    request.finish()
    return NOT_DONE_YET
