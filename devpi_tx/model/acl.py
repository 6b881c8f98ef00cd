"""
Who may do what: devpi-server's global and per-index ACLs.

A request's L{Identity} expands to principals (C{:ANONYMOUS:} always;
C{:AUTHENTICATED:}, the user name and, for each group, C{:group:NAME} and
C{:NAME} once logged in).  A permission is granted when the principals
meet the ones the L{Policy} names for it.  Without C{--restrict-modify}, users manage themselves and root
manages everyone; with it, only the listed principals manage users and
indexes (and everyone keeps the right to change their own password).
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

ANONYMOUS = ":ANONYMOUS:"
AUTHENTICATED = ":AUTHENTICATED:"
#: A group's principal as devpi-ldap's documentation writes it
#: (C{:group:NAME}); C{:NAME}, as devpi-server forms it, works too.
GROUP_PREFIX = ":group:"


@attrs.frozen
class Identity:
    """
    Who sent a request: a user name (L{None} when anonymous) and groups.
    """

    username: str | None = None
    groups: tuple[str, ...] = ()

    @property
    def authenticated(self) -> bool:
        return self.username is not None

    def principals(self) -> frozenset[str]:
        if self.username is None:
            return frozenset([ANONYMOUS])
        groups = [":" + group for group in self.groups] + [GROUP_PREFIX + group for group in self.groups]
        return frozenset([ANONYMOUS, AUTHENTICATED, self.username, *groups])


ANONYMOUS_IDENTITY = Identity()


def normalize_acl_entry(entry: str) -> str:
    """
    Upper-case the special principals, as devpi stores them.
    """
    upper = entry.upper()
    if upper in (ANONYMOUS, AUTHENTICATED):
        return upper
    return entry


@attrs.frozen
class Policy:
    """
    The server-wide rules; C{restrict_modify} is the parsed
    C{--restrict-modify} list, or L{None}.
    """

    restrict_modify: frozenset[str] | None = None

    def _admin(self, identity: Identity) -> bool:
        if self.restrict_modify is None:
            return identity.username == "root"
        return bool(identity.principals() & self.restrict_modify)

    def _self_or_admin(self, identity: Identity, owner: str) -> bool:
        if self.restrict_modify is None:
            return identity.username in ("root", owner)
        return self._admin(identity)

    def may_create_user(self, identity: Identity) -> bool:
        if self.restrict_modify is None:
            return True
        return self._admin(identity)

    def may_modify_user(self, identity: Identity, username: str) -> bool:
        return self._self_or_admin(identity, username)

    def may_change_password(self, identity: Identity, username: str) -> bool:
        return identity.username == username or self._self_or_admin(identity, username)

    def may_delete_user(self, identity: Identity, username: str) -> bool:
        if username == "root":
            return False
        if self.restrict_modify is not None and identity.username == username:
            # Restricted admins cannot delete themselves.
            return False
        return self._self_or_admin(identity, username)

    def may_create_index(self, identity: Identity, owner: str) -> bool:
        return self._self_or_admin(identity, owner)

    def may_modify_index(self, identity: Identity, owner: str, acl_modify: Iterable[str] = ()) -> bool:
        return bool(identity.principals() & frozenset(acl_modify)) or self._self_or_admin(identity, owner)

    def may_upload(self, identity: Identity, acl_upload: Iterable[str]) -> bool:
        return bool(identity.principals() & frozenset(acl_upload))

    def may_read(self, identity: Identity, owner: str, acl_read: Iterable[str]) -> bool:
        return bool(identity.principals() & frozenset(acl_read)) or self._self_or_admin(identity, owner)

    def may_delete_entries(self, identity: Identity, owner: str, acl_upload: Iterable[str]) -> bool:
        return self.may_upload(identity, acl_upload) or self._self_or_admin(identity, owner)


def parse_restrict_modify(spec: str | None) -> frozenset[str] | None:
    """
    Parse C{--restrict-modify}: a comma list of users and C{:groups}.
    """
    if spec is None:
        return None
    return frozenset(normalize_acl_entry(item.strip()) for item in spec.split(",") if item.strip())
