"""
Authentication by sources outside the server (L{IAuthenticator} plugins:
the LDAP case of devpi-ldap), and an in-memory one for tests.

How their verdicts combine (L{ask}), as devpi-server combines its
C{devpiserver_auth_request} hooks: every authenticator is asked; one
rejection refuses the password; otherwise, if some accept, the user is
authenticated with the union of their groups; if all answer C{unknown}
(or none is installed), the server's own users decide.  C{root} is never
asked about: it is always a local user, so that a directory can neither
lock it out nor grant it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from zope.interface import implementer

from ..interfaces import IAuthenticator
from ..logs import logger

log = logger("devpi_tx.auth.external")


@attrs.frozen
class Verdict:
    """
    What an authenticator says of a user's password: C{status} is
    C{"ok"}, C{"reject"} or C{"unknown"}; C{groups} (with C{"ok"}) are
    the user's groups, principals C{:group:NAME} in ACLs.
    """

    status: str
    groups: tuple[str, ...] = ()

    @classmethod
    def accept(cls, groups: Iterable[str] = ()) -> Verdict:
        return cls("ok", tuple(groups))

    @classmethod
    def reject(cls) -> Verdict:
        return cls("reject")

    @classmethod
    def unknown(cls) -> Verdict:
        return cls("unknown")


UNKNOWN = Verdict.unknown()


async def ask(authenticators: Iterable[IAuthenticator], username: str, password: str) -> Verdict:
    """
    The combined verdict of C{authenticators} on C{username}'s
    C{password} (C{unknown} for root and when there are none).  They are
    asked together; a failure or an answer that is not a L{Verdict} counts
    as C{unknown} and is logged.
    """
    authenticators = list(authenticators)
    if username == "root" or not authenticators:
        return UNKNOWN
    # (maybeDeferred also takes a coroutine, as the interface allows.)
    pending = [maybeDeferred(a.authenticate, username, password) for a in authenticators]
    verdicts = []
    for authenticator, d in zip(authenticators, pending, strict=True):
        name = getattr(authenticator, "name", type(authenticator).__name__)
        try:
            verdict = await d
        except Exception:
            log.failure("authenticator {name!r} failed for user {user!r}", name=name, user=username)
            continue
        if not isinstance(verdict, Verdict):
            log.error(
                "authenticator {name!r} answered {answer!r}, not a Verdict, for user {user!r}",
                name=name,
                answer=verdict,
                user=username,
            )
            continue
        verdicts.append(verdict)
    if any(v.status == "reject" for v in verdicts):
        return Verdict.reject()
    accepted = [v for v in verdicts if v.status == "ok"]
    if not accepted:
        return UNKNOWN
    groups: dict[str, None] = {}
    for verdict in accepted:
        groups.update(dict.fromkeys(verdict.groups))
    return Verdict.accept(groups)


@implementer(IAuthenticator)
class MemoryAuthenticator:
    """
    Users, passwords and groups in a mapping: C{{name: (password,
    groups)}}.  A listed user with another password is rejected; others
    are unknown.  With a C{clock}, each answer comes C{delay} seconds
    later (to show that a slow source holds nothing else).

    @ivar asked: the user names asked about, in order.
    """

    name = "memory"

    def __init__(self, users: Mapping[str, tuple[str, Iterable[str]]], clock=None, delay: float = 0) -> None:
        self.users = {name: (password, tuple(groups)) for name, (password, groups) in users.items()}
        self.clock = clock
        self.delay = delay
        self.asked: list[str] = []

    def _verdict(self, username: str, password: str) -> Verdict:
        if username not in self.users:
            return UNKNOWN
        expected, groups = self.users[username]
        return Verdict.accept(groups) if password == expected else Verdict.reject()

    def authenticate(self, username: str, password: str) -> Deferred[Verdict]:
        self.asked.append(username)
        if self.clock is None:
            return succeed(self._verdict(username, password))
        from twisted.internet.task import deferLater

        return deferLater(self.clock, self.delay, self._verdict, username, password)
