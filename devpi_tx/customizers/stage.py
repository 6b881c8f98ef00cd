"""
The C{stage} index type: a private index that takes uploads.
"""

from __future__ import annotations

from zope.interface import implementer

from ..interfaces import IStageCustomizer
from ..model import values
from .base import COMMON_PARSERS, TableCustomizer


@implementer(IStageCustomizer)
class StageCustomizer(TableCustomizer):
    type_name = "stage"
    parsers = {
        **COMMON_PARSERS,
        "bases": values.parse_list,
        "acl_upload": values.parse_acl,
        "acl_toxresult_upload": values.parse_acl,
        "mirror_whitelist": values.parse_whitelist,
        "mirror_whitelist_inheritance": values.parse_whitelist_inheritance,
    }
    list_keys = frozenset(["bases", "acl_upload", "acl_toxresult_upload", "mirror_whitelist"])

    def defaults(self) -> dict:
        # acl_upload defaults to the owner; the model fills that in.
        return {
            "type": "stage",
            "bases": [],
            "volatile": True,
            "acl_upload": [],
            "acl_toxresult_upload": [":ANONYMOUS:"],
            "mirror_whitelist": [],
            "mirror_whitelist_inheritance": "intersection",
        }
