"""
The routes of private indexes, composed into one mixin of
L{devpi_tx.web.api.DevpiAPI}.

Each family lives in a module of its own:

  - L{uploads}: release files, doc zips and registrations
  - L{simplepages}: the simple API (PEP 503/691)
  - L{projects}: project and version JSON, C{+explain}
  - L{removal}: deleting and yanking
  - L{fileroutes}: C{+f} and C{+e} files and their C{.metadata}
  - L{toxresults}: tox results
  - L{push}: push to another index, here or elsewhere

Importing them registers their routes on the shared Klein app
(L{devpi_tx.web.router}), in this order.
"""

from __future__ import annotations

from .fileroutes import FileRoutes
from .projects import ProjectRoutes
from .push import PushRoutes
from .removal import RemovalRoutes
from .simplepages import SimpleRoutes
from .toxresults import ToxResultRoutes
from .uploads import UploadRoutes


class ReleaseRoutes(
    UploadRoutes,
    SimpleRoutes,
    ProjectRoutes,
    RemovalRoutes,
    FileRoutes,
    ToxResultRoutes,
    PushRoutes,
):
    """
    Mixin with the routes of private indexes.
    """
