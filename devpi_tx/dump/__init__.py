"""
Export and import of a whole server (C{devpi-tx export}, C{devpi-tx
import}), and migration from devpi-server (C{devpi-tx import --from-devpi}).

The dump is devpi-export's format (dump version 2), so that devpi-import
reads devpi-tx's dumps and devpi-tx reads devpi-server's::

    DIR/dataindex.json
        {"dumpversion": "2", "pythonversion": [...], "devpi_tx": <version>,
         "users": {name: user record with pwhash, without "indexes"},
         "indexes": {"user/index": {
             "indexconfig": {...},
             "projects": {normalised name: {version: version metadata}},
             "files": [{"type": "releasefile" | "doczip" | "toxresult",
                        "projectname", "version", "relpath" (below DIR),
                        "entrymapping": {"last_modified": HTTP date,
                                         "hash_spec", "hashes", "project",
                                         "version"},
                        "log": [...], "for_entrypath" (tox results),
                        "devpi_tx_link": the link record as stored}],
             "devpi_tx": {"projects": {normalised name: project record},
                          "gone": {path: record of a deleted file}}}}}
    DIR/<user>/<index>/<project>/<version>/<basename>     release files
    DIR/<user>/<index>/<project>-<version>.doc.zip          documentation
    DIR/<user>/<index>/<project>/sha256=<hash of the release file>/<basename>
                                                            tox results

What devpi's format cannot carry is kept in keys devpi-import ignores
(C{devpi_tx}, C{devpi_tx_link}): the link records as stored (upload times
to the microsecond, yanked, attestations), projects without versions and
deleted files (which answer 410).  With them a devpi-tx dump imports into
a state whose pages, JSON and files are the exported server's.  Mirrors
are exported as their configuration only (their files can be fetched
again), as devpi-export does by default.
"""

from __future__ import annotations


class DumpError(ValueError):
    """
    The dump or the server directory is not what the command needs; the
    message says what, naming the path or option, on one line.
    """
