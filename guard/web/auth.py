"""Who is asking, and which runs they may see.

A caller presents an API token (`Authorization: Bearer <token>`), or the session cookie that
`POST /api/session` set after checking one: a browser's EventSource cannot send headers, and
tokens never go in URLs. The server keeps only SHA-256 digests of tokens and an in-memory map
of opaque session ids; a restart signs every browser out.

A run is visible when every one of its tenants is among the caller's tenants; anything else is
answered as if it did not exist (404), so a caller cannot learn another tenant's run ids.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from starlette.requests import HTTPConnection

from rag.errors import TenantIdError
from rag.tenancy import validate_tenant_id

SESSION_COOKIE = "tg_session"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def hash_token(token: str) -> str:
    """The SHA-256 hex digest a token file stores for `token`."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: the tenants it may see, and how it proved it."""

    tenants: frozenset[str]
    via: Literal["token", "session"]
    session_id: str | None = None

    def can_see(self, tenants: Iterable[str]) -> bool:
        return set(tenants) <= self.tenants


class TokenRegistry:
    """Checks API tokens against their stored digests."""

    def __init__(self, digests: Mapping[str, frozenset[str]]) -> None:
        self._digests = dict(digests)

    def tenants_for(self, token: str) -> frozenset[str] | None:
        if not token:
            return None
        digest = hash_token(token)
        found = None
        for known, tenants in self._digests.items():  # compare every entry, in constant time
            if hmac.compare_digest(known, digest):
                found = tenants
        return found


@dataclass
class _Session:
    tenants: frozenset[str]
    expires: float


class SessionStore:
    """Opaque random session ids -> tenants, expiring after `ttl_s`; oldest dropped first
    beyond `max_sessions`."""

    def __init__(self, ttl_s: float, max_sessions: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl_s
        self._max = max_sessions
        self._clock = clock
        self._sessions: OrderedDict[str, _Session] = OrderedDict()

    def create(self, tenants: frozenset[str]) -> str:
        session_id = secrets.token_urlsafe(32)
        self._sessions[session_id] = _Session(tenants, self._clock() + self._ttl)
        while len(self._sessions) > self._max:
            self._sessions.popitem(last=False)
        return session_id

    def tenants_for(self, session_id: str) -> frozenset[str] | None:
        session = self._sessions.get(session_id)
        if session is None:
            return None
        if session.expires <= self._clock():
            del self._sessions[session_id]
            return None
        return session.tenants

    def drop(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)


class Authenticator:
    """Resolves a request to a Principal, or None (the caller gets 401)."""

    def __init__(self, tokens: TokenRegistry, sessions: SessionStore) -> None:
        self.tokens = tokens
        self.sessions = sessions

    def bearer(self, conn: HTTPConnection) -> Principal | None:
        scheme, _, token = conn.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        tenants = self.tokens.tenants_for(token.strip())
        return Principal(tenants, "token") if tenants is not None else None

    def resolve(self, conn: HTTPConnection) -> Principal | None:
        """The header wins when present (a bad one is not rescued by a cookie)."""
        if "authorization" in conn.headers:
            return self.bearer(conn)
        session_id = conn.cookies.get(SESSION_COOKIE)
        if not session_id:
            return None
        tenants = self.sessions.tenants_for(session_id)
        return Principal(tenants, "session", session_id) if tenants is not None else None


def cross_site(conn: HTTPConnection, method: str) -> bool:
    """True for a state-changing request, authenticated by cookie, that a page from another
    origin sent. SameSite=Strict stops other sites, not other ports of the same host."""
    if method in _SAFE_METHODS:
        return False
    if conn.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return True
    origin = conn.headers.get("origin")
    if origin is None:
        return False
    own = f"{conn.url.scheme}://{conn.headers.get('host', '')}"
    return origin != own


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m guard.web.auth TENANT...`: print a new token and its token-file line."""
    tenants = list(sys.argv[1:] if argv is None else argv)
    if not tenants:
        print("usage: python -m guard.web.auth TENANT [TENANT...]", file=sys.stderr)
        return 2
    try:
        for tenant in tenants:
            validate_tenant_id(tenant)
    except TenantIdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    token = secrets.token_urlsafe(32)
    quoted = ", ".join(f'"{t}"' for t in tenants)
    print(f"token (give it to the user; it is not stored): {token}")
    print("line for the [tokens] table of the token file:")
    print(f'"{hash_token(token)}" = [{quoted}]')
    return 0


if __name__ == "__main__":
    sys.exit(main())
