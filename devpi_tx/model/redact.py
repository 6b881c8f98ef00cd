"""
What the API may show of stored configuration: upstream credentials never.

Its own module because both L{devpi_tx.model.users} (a user record shows
its indexes) and L{devpi_tx.model.indexes} (which builds on users) need
it; neither has to import the other to get it.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def redact_url(url: str) -> str:
    """
    A URL as it may be shown: credentials replaced by C{***}.
    """
    parts = urlsplit(url)
    if parts.username is None:
        return url
    netloc = "***@" + (parts.hostname or "")
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def public_config(config: dict) -> dict:
    """
    An index configuration as the API shows it: upstream credentials in
    C{mirror_url} are never shown.
    """
    if "mirror_url" in config:
        return dict(config, mirror_url=redact_url(config["mirror_url"]))
    return config
