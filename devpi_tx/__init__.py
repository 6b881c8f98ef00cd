"""
devpi-tx: a private Python package index and PyPI caching server on Twisted,
wire-compatible with devpi-server.
"""

__version__ = "0.1.0"

#: The devpi-server version whose wire protocol devpi-tx speaks; clients
#: read it from the C{X-Devpi-Server-Version} header.
COMPATIBLE_SERVER_VERSION = "6.20.3"
