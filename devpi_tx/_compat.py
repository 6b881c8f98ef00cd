"""
The private names of libraries that devpi-tx relies on, in one place, each
with what it relies on; C{tests/test_compat.py} pins that behaviour, so an
upgrade that changes it fails there first.
"""

from __future__ import annotations

from twisted.web.client import HTTPConnectionPool


def quiet_pool(pool: HTTPConnectionPool) -> None:
    """
    Stop C{pool} from logging "Starting factory" and "Stopping factory"
    for every connection it opens and closes: two formatted lines per
    upstream connection, a hundred for fifty cold pages at once.

    Relies on: L{HTTPConnectionPool} documents its C{_factory} class
    attribute as what it makes a connection's protocol factory with, called
    with the reactor-independent arguments it was given; the factory it
    returns has C{noisy}.
    """
    make = pool._factory
    if getattr(make, "quiet", False):
        return

    def quiet_factory(*args, **kwargs):
        factory = make(*args, **kwargs)
        factory.noisy = False
        return factory

    quiet_factory.quiet = True  # type: ignore[attr-defined]
    pool._factory = quiet_factory  # type: ignore[assignment]
