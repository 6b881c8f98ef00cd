"""
The C{mirror} index type: a cache of an upstream simple index.  Its options
are stored and validated here; the fetching lives in L{devpi_tx.mirror}.
"""

from __future__ import annotations

from zope.interface import implementer

from ..interfaces import IStageCustomizer
from ..model import values
from .base import COMMON_PARSERS, TableCustomizer


@implementer(IStageCustomizer)
class MirrorCustomizer(TableCustomizer):
    type_name = "mirror"
    is_mirror = True
    readonly = True
    parsers = {
        **COMMON_PARSERS,
        "mirror_url": values.parse_url("mirror_url"),
        "mirror_cache_expiry": values.parse_int("mirror_cache_expiry"),
        "mirror_no_project_list": values.parse_bool,
        "mirror_use_external_urls": values.parse_bool,
        "mirror_ignore_serial_header": values.parse_bool,
        "mirror_provides_core_metadata": values.parse_bool,
        "mirror_web_url_fmt": values.parse_text("mirror_web_url_fmt"),
    }
    # Sent by old exports and clients; accepted and dropped, as devpi does.
    _ignored = frozenset(["bases", "acl_upload", "mirror_whitelist"])

    def __init__(self, default_mirror_url: str | None = None) -> None:
        self.default_mirror_url = default_mirror_url

    def defaults(self) -> dict:
        # Like devpi, the other mirror_* keys are absent until set; readers
        # fall back to the server-wide values (--mirror-cache-expiry).
        config: dict = {"type": "mirror", "volatile": True}
        if self.default_mirror_url:
            config["mirror_url"] = self.default_mirror_url
        return config
