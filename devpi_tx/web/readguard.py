"""
Who may read an index: its index type's C{principals_for_read}
(L{devpi_tx.interfaces.IStageCustomizer}), checked before any work for a
C{GET} or C{HEAD} under C{/{user}/{index}/}: simple pages (by the
installer fast path or Klein), the index and project JSON, C{+explain},
and files.

An index shows its bases' projects, so a request to an index must be
allowed to read every index of its chain: a restricted base stays
restricted when reached through an inheriting index.  Every built-in
type lets everyone read (C{:ANONYMOUS:}); for such chains the check is one
memo lookup per request, and no credentials are read.  The owner of an
index and the server's administrators may always read it.
"""

from __future__ import annotations

import re

import attrs
from twisted.internet.defer import ensureDeferred
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from ..model import stages
from ..model.acl import ANONYMOUS
from ..model.indexes import get_index
from .render import error

#: The first two segments of a path that may name an index ("+" starts
#: the server's own routes, such as /+api and /+login).
_INDEX_PATH = re.compile(rb"/([^/+][^/]*)/([^/+][^/]*)(?:/|$)")


@attrs.frozen
class Restriction:
    """
    An index of a chain that not everyone may read.
    """

    stage: str
    owner: str
    principals: frozenset[str]


class ReadGuard(Resource):
    """
    The root resource's wrapper that refuses reads of indexes a request's
    identity may not read (401 without credentials, so that pip asks for
    them; 403 with credentials that do not suffice).
    """

    isLeaf = True

    def __init__(self, inner: Resource, api) -> None:
        """
        @param inner: what serves the request once it may read.
        @param api: the L{devpi_tx.web.api.DevpiAPI} (its context, memo,
            index types and authenticator).
        """
        super().__init__()
        self._inner = inner
        self._api = api

    def restrictions(self, user: str, index: str) -> tuple[Restriction, ...]:
        """
        The indexes of C{user/index}'s chain whose type restricts reading
        (none if there is no such index); remembered until an index
        changes.
        """
        ctx = self._api.ctx
        return ctx.memo.get(("read-restrictions", user, index), lambda: self._compute(user, index))

    def _compute(self, user: str, index: str) -> tuple[Restriction, ...]:
        ctx = self._api.ctx
        if get_index(ctx.storage, user, index) is None:
            return ()
        found = []
        for stage in stages.resolution_order(ctx.storage, f"{user}/{index}", ctx.registry.is_mirror):
            principals = ctx.registry.shown_by(stage.config).principals_for_read(stage.config)
            if ANONYMOUS not in principals:
                found.append(Restriction(stage.name, stage.name.split("/", 1)[0], frozenset(principals)))
        return tuple(found)

    def render(self, request):
        if request.method in (b"GET", b"HEAD"):
            match = _INDEX_PATH.match(request.path)
            if match is not None:
                try:
                    user, index = (part.decode("utf-8") for part in match.groups())
                except UnicodeDecodeError:
                    return self._inner.render(request)
                restricted = self.restrictions(user, index)
                if restricted:
                    return self._check(request, restricted)
        return self._inner.render(request)

    def _check(self, request, restricted: tuple[Restriction, ...]):
        d = ensureDeferred(self._api.auth.authenticate(request))

        def checked(auth) -> None:
            policy = self._api.ctx.policy
            denied = [r for r in restricted if not policy.may_read(auth.identity, r.owner, r.principals)]
            if not denied:
                result = self._inner.render(request)
                if result is not NOT_DONE_YET:
                    request.write(result)
                    request.finish()
                return
            if not auth.identity.authenticated or auth.failed:
                request.setHeader("WWW-Authenticate", 'Basic realm="pypi"')
                if auth.failed:
                    body = error(request, 401, f"credentials for user {auth.sent_user!r} were rejected")
                else:
                    body = error(request, 401, f"authentication required to read {denied[0].stage}")
            else:
                body = error(request, 403, f"no permission to read {denied[0].stage}")
            request.write(body)
            request.finish()

        gone: list = []
        request.notifyFinish().addBoth(gone.append)
        d.addCallback(lambda auth: None if gone else checked(auth))
        d.addErrback(lambda failure: None if gone else request.processingFailed(failure))
        return NOT_DONE_YET
