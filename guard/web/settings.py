"""The dashboard server's configuration: one typed object, built once by `guard serve`.

API tokens live in a TOML file that holds only their SHA-256 digests, never the tokens:

    # tokens.toml: SHA-256 hex digest of a token -> the tenants that token may see
    [tokens]
    "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8" = ["hr", "it"]
    "a665a45920422f9d417e4867efdc4fb8a04a1f3fff1fa07e998e86f7f7a27ae3" = ["hr"]

Make a token and its line with `python -m guard.web.auth hr it`. The file is found through
`guard serve --token-file PATH`, else the environment variable `TRUTHGUARD_TOKEN_FILE`. A token
sees a run when every tenant of the run is in its list. Behind an HTTPS proxy, set
`TRUTHGUARD_SECURE_COOKIES=1` so the session cookie is marked Secure.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from rag.errors import InputError, TenantIdError
from rag.tenancy import validate_tenant_id

TOKEN_FILE_ENV = "TRUTHGUARD_TOKEN_FILE"
SECURE_COOKIES_ENV = "TRUTHGUARD_SECURE_COOKIES"  # "1" when served over HTTPS (a TLS proxy)
_DIGEST = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class WebSettings:
    """Everything the dashboard server needs; `tokens` maps a token's SHA-256 hex digest to
    the tenants it may see."""

    data_dir: Path
    experiments_dir: Path
    tokens: Mapping[str, frozenset[str]] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 8765
    demo_spec: str = "demo"
    poll_interval_s: float = 0.2  # how often an event stream looks for new journal lines
    ping_interval_s: float = 15.0  # keep-alive comments on idle event streams
    session_ttl_s: float = 8 * 3600.0
    secure_cookies: bool = False  # set when served over HTTPS (behind a TLS proxy)
    use_cache: bool = True  # the response cache shared with `guard run`
    cancel_grace_s: float = 5.0  # after a cancel, how long cases in flight may finish
    max_active_runs: int = 4  # runs this server executes at once; more get 429

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"

    @property
    def cache_path(self) -> Path | None:
        return self.data_dir / "cache" / "responses.sqlite" if self.use_cache else None


def load_tokens(path: Path) -> dict[str, frozenset[str]]:
    """Read a token file (see the module docstring); errors name the file and the entry."""
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"token file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read token file: {exc}", location=str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"invalid TOML: {exc}", location=str(path)) from None
    table = raw.get("tokens")
    if not isinstance(table, dict) or not table:
        raise InputError("needs a non-empty [tokens] table: SHA-256 hex digest = [tenants]",
                         location=str(path))
    tokens: dict[str, frozenset[str]] = {}
    for digest, tenants in table.items():
        shown = digest[:12] + "…" if len(digest) > 12 else digest
        if not _DIGEST.fullmatch(digest):
            raise InputError(f"key {shown!r} is not a SHA-256 hex digest (64 characters "
                             "0-9a-f); store digests, never the tokens", location=str(path))
        if not isinstance(tenants, list) or not tenants:
            raise InputError(f"tokens.{shown}: needs a non-empty list of tenants",
                             location=str(path))
        try:
            tokens[digest] = frozenset(validate_tenant_id(t) for t in tenants)
        except TenantIdError as exc:
            raise InputError(f"tokens.{shown}: {exc}", location=str(path)) from None
    return tokens


def load_settings(
    *,
    data_dir: Path,
    experiments_dir: Path,
    token_file: Path | None,
    env: Mapping[str, str],
    host: str = "127.0.0.1",
    port: int = 8765,
) -> WebSettings:
    """Settings for `guard serve`; `env` is read here and nowhere else."""
    token_path = token_file or (Path(env[TOKEN_FILE_ENV]) if env.get(TOKEN_FILE_ENV) else None)
    if token_path is None:
        raise InputError(f"no API tokens configured: pass --token-file PATH or set "
                         f"{TOKEN_FILE_ENV} (make one with `python -m guard.web.auth TENANT...`)")
    if not 0 <= port <= 65535:
        raise InputError(f"invalid port {port}")
    secure = env.get(SECURE_COOKIES_ENV, "").strip().lower() in ("1", "true", "yes")
    return WebSettings(data_dir=Path(data_dir), experiments_dir=Path(experiments_dir),
                       tokens=load_tokens(token_path), host=host, port=port,
                       secure_cookies=secure)
