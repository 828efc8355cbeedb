"""Message tracking: what was sent, which confirmations came back, what was received before (replays)."""

from directmilter.tracking.store import Overdue, TrackingStore, open_store

__all__ = ["Overdue", "TrackingStore", "open_store"]
