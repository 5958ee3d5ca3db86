"""Tenant ids: one strict pattern, checked at every entry point and again at storage."""

from __future__ import annotations

import re

from rag.errors import TenantIdError

# ASCII only, so unicode look-alikes fail; no quotes, separators, dots or spaces, so an id can
# name a table or a folder and never reach SQL or a path outside its own.
TENANT_ID_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,47}")


def validate_tenant_id(tenant: object) -> str:
    """Return `tenant` unchanged if it is a valid tenant id, else raise TenantIdError."""
    if not isinstance(tenant, str) or not TENANT_ID_PATTERN.fullmatch(tenant):
        raise TenantIdError(
            f"invalid tenant id {tenant!r}: use 1-48 characters a-z, 0-9 and _, "
            "starting with a letter"
        )
    return tenant
