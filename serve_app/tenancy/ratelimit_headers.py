"""OpenAI's rate-limit response headers (x-ratelimit-*), as the quota limiter fills them in."""

from __future__ import annotations

from collections.abc import Mapping

from serve_app.tenancy.leases import LocalLease
from serve_app.tenancy.limits import Dimension

# OpenAI has headers for requests and tokens only; a concurrency refusal says so in its message instead.
HEADER_NAMES = tuple((dimension, f"x-ratelimit-limit-{dimension.value}", f"x-ratelimit-remaining-{dimension.value}",
                      f"x-ratelimit-reset-{dimension.value}") for dimension in (Dimension.REQUESTS, Dimension.TOKENS))


def rate_limit_headers(leases: Mapping[Dimension, LocalLease], now: float) -> dict[str, str]:
    """limit, remaining and reset for each limit the key has; remaining is this replica's view of the cluster."""
    headers: dict[str, str] = {}
    for dimension, limit_name, remaining_name, reset_name in HEADER_NAMES:
        lease = leases.get(dimension)
        if lease is None:
            continue
        remaining, reset_s = lease.window(now)
        headers[limit_name] = str(lease.capacity)
        headers[remaining_name] = str(remaining)
        headers[reset_name] = format_duration(reset_s)
    return headers


def format_duration(seconds: float) -> str:
    """A duration as OpenAI writes it (Go's time.Duration, to the millisecond): "20ms", "1s", "1m30.5s", "6m0s"."""
    millis = round(seconds * 1000)
    if millis <= 0:
        return "0s"
    if millis < 1000:
        return f"{millis}ms"
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    text = f"{rest / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    return f"{minutes}m{text}" if minutes else text
