"""
What devpi-tx relies on of libraries' private names (L{devpi_tx._compat}):
each test pins one behaviour, so that an upgrade that changes it fails
here, by name, rather than somewhere downstream.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.web.client import HTTPConnectionPool

from devpi_tx._compat import quiet_pool


def test_the_pool_makes_its_connection_factories_with_its_factory_attribute():
    # HTTPConnectionPool._newConnection calls self._factory(quiescentCallback,
    # metadata) for every connection it opens.
    pool = HTTPConnectionPool(reactor)
    factory = pool._factory(lambda protocol: None, "metadata")
    assert factory.noisy is True


def test_quiet_pool_makes_quiet_factories_once():
    pool = HTTPConnectionPool(reactor)
    quiet_pool(pool)
    wrapped = pool._factory
    quiet_pool(pool)
    assert pool._factory is wrapped
    factory = pool._factory(lambda protocol: None, "metadata")
    assert factory.noisy is False
    # Other pools are left alone.
    assert HTTPConnectionPool(reactor)._factory(lambda protocol: None, "m").noisy is True
