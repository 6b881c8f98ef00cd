"""
An example devpi-tx plugin of each kind (docs/plugins.md):

 - C{Hiding}, an index type: its bases seen without the versions listed
   in C{hide_versions};
 - C{JSONFileUsers}, an authenticator: users, passwords and groups from
   the JSON file named by C{$DEVPI_TX_EXAMPLE_USERS}
   (C{{"name": {"password": "...", "groups": ["..."]}}}), read in a
   thread as an LDAP bind would run;
 - C{EventLog}, an event listener: one JSON line per event appended to
   the file named by C{$DEVPI_TX_EXAMPLE_EVENTS}, written in a thread.
"""

import hmac
import json
import os

import attrs
from twisted.internet.threads import deferToThread
from zope.interface import implementer

from devpi_tx.auth.external import Verdict
from devpi_tx.customizers.base import COMMON_PARSERS, TableCustomizer
from devpi_tx.interfaces import IAuthenticator, IEventListener
from devpi_tx.model import values


class Hiding(TableCustomizer):
    """
    Bases seen without the versions listed in hide_versions.
    """

    type_name = "hiding"
    filters = True
    parsers = {**COMMON_PARSERS, "bases": values.parse_list, "hide_versions": values.parse_list}
    list_keys = frozenset(["bases", "hide_versions"])

    def defaults(self):
        return {"type": "hiding", "bases": [], "volatile": True, "hide_versions": []}

    def versions_filter(self, config, project, versions):
        return [version not in config["hide_versions"] for version in versions]


@implementer(IAuthenticator)
class JSONFileUsers:
    name = "jsonfile"

    def __init__(self, path=None):
        self.path = path or os.environ.get("DEVPI_TX_EXAMPLE_USERS", "")

    def _check(self, username, password):
        # Blocking I/O (a file here, an LDAP bind in real life): in a thread.
        if not self.path:
            return Verdict.unknown()
        with open(self.path, encoding="utf-8") as f:
            users = json.load(f)
        if username not in users:
            return Verdict.unknown()
        entry = users[username]
        if not hmac.compare_digest(entry["password"].encode(), password.encode()):
            return Verdict.reject()
        return Verdict.accept(entry.get("groups", []))

    def authenticate(self, username, password):
        return deferToThread(self._check, username, password)


@implementer(IEventListener)
class EventLog:
    name = "eventlog"

    def __init__(self, path=None):
        self.path = path or os.environ.get("DEVPI_TX_EXAMPLE_EVENTS", "")

    def _write(self, kind, event):
        if not self.path:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"kind": kind, **attrs.asdict(event)}, sort_keys=True) + "\n")

    def on_upload(self, event):
        return deferToThread(self._write, "upload", event)

    def on_remove(self, event):
        return deferToThread(self._write, "remove", event)

    def on_index_change(self, event):
        return deferToThread(self._write, "index", event)
