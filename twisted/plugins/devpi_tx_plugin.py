"""
The twistd plugin: C{twistd -n devpi [options]}.
"""

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(IServiceMaker, IPlugin)
class DevpiServiceMaker:
    tapname = "devpi"
    description = "devpi-tx: private Python package index and PyPI cache"

    @property
    def options(self):
        # Imported lazily so that `twistd --help` stays fast and a broken
        # install shows up as an error of this plugin only.
        from devpi_tx.options import TwistdServerOptions

        return TwistdServerOptions

    def makeService(self, options):
        from twisted.internet import reactor

        from devpi_tx.service import make_service

        return make_service(
            options.config,
            reactor,
            lock=getattr(options, "lock", None),
            plugins=getattr(options, "plugins", None),
        )


serviceMaker = DevpiServiceMaker()
