"""Input limits, checked in Python before any I/O."""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    """Configurable limits; every violation raises a typed error before a write.

    The id rules are fixed (storage/keys.py); their maximum lengths are
    configurable down from the documented maxima.
    """

    max_message_bytes: int = MIB
    """Size of one encoded record ``{"id", "body"}`` in UTF-8 bytes."""
    max_batch: int = 1000
    """Messages in one append or replace call."""
    max_state_bytes: int = MIB
    """Size of the encoded state slice."""
    max_depth: int = 128
    """Nesting depth of a message body or state (lists and objects)."""
    max_thread_id_bytes: int = 512
    """Length of a thread id in UTF-8 bytes."""
    max_message_id_length: int = 256

    def __post_init__(self) -> None:
        for name in ("max_message_bytes", "max_batch", "max_state_bytes", "max_depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"Limits.{name} must be >= 1")
        if not 1 <= self.max_thread_id_bytes <= 512:
            raise ValueError("Limits.max_thread_id_bytes must be within 1..512")
        if not 1 <= self.max_message_id_length <= 256:
            raise ValueError("Limits.max_message_id_length must be within 1..256")


DEFAULT_LIMITS = Limits()
