"""Gate notifications: POST a JSON summary to a webhook (Slack incoming webhooks and alike)."""

from __future__ import annotations

from typing import Any

import httpx


def post_json(url: str, payload: dict[str, Any], *, timeout: float = 10.0,
              transport: httpx.BaseTransport | None = None) -> str | None:
    """POST `payload`; return None on a 2xx answer, else what went wrong (never raises on
    network or HTTP errors: a failed notification must not change a gate's outcome)."""
    try:
        with httpx.Client(timeout=timeout, transport=transport) as client:
            response = client.post(url, json=payload)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    if response.is_success:
        return None
    return f"HTTP {response.status_code}: {response.text[:200]}"
