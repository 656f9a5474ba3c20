"""Durations as the commands take and show them: ``90s``, ``30m``, ``1h30m``."""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(text: str) -> float:
    """Seconds in ``text``: ``90`` or ``90s``, ``30m``, ``2h``, ``7d``, ``1w``, ``500ms``,
    and sums such as ``1h30m``. A bare number is seconds."""
    cleaned = text.strip().lower().replace(" ", "")
    try:
        seconds = float(cleaned)
    except ValueError:
        parts = _DURATION.findall(cleaned)
        if not parts or "".join(n + u for n, u in parts) != cleaned:
            raise ValueError(
                f"invalid duration {text!r}: use a number of seconds or e.g. 90s, 30m, 2h, 7d, "
                "1h30m"
            ) from None
        seconds = sum(float(number) * _UNITS[unit] for number, unit in parts)
    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise ValueError(f"invalid duration {text!r}: must be a finite number >= 0")
    return seconds


def format_duration(seconds: float) -> str:
    """``3725`` -> ``1h2m``: the largest two units, for tables."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    remaining = int(seconds)
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if remaining >= size or (unit == "s" and not parts):
            parts.append(f"{remaining // size}{unit}")
            remaining %= size
    return "".join(parts[:2])
