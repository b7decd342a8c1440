"""What the service and its fan-out tell an observer (the metrics) as they work.

The parts call these hooks instead of being subclassed by their instruments; the default
observer does nothing, so the parts run the same without metrics.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from contract.events import Event


class Observer:
    """Every hook does nothing; an observer overrides the ones it needs."""

    def job_creating(self, record: Mapping[str, Any]) -> None:
        """A job is about to be written (its ``started`` may arrive before ``create`` returns)."""

    def job_created(self, record: Mapping[str, Any], created: bool) -> None:
        """The job was written (``created``), or not (a repeat, a full queue, an error)."""

    def event_received(self, event: Event) -> None:
        """Every event this process's subscription receives from Redis."""

    def events_delivered(self, count: int) -> None:
        """Events handed to a local consumer."""

    def events_coalesced(self, count: int) -> None:
        """Progress events replaced by a newer one in a full buffer."""

    def events_dropped(self, count: int) -> None:
        """Events left undelivered when a stuck consumer was given up."""

    def online_batch(self, model: str, requests: int, rows: int) -> None:
        """A batch of online requests was sent to the workers."""

    def online_answered(self, model: str, rows: int, seconds: float, outcome: str) -> None:
        """An online request ended: ``succeeded``, ``failed`` (the model's error, or no time
        left after a worker was lost), ``timeout`` or ``refused`` (over the admission bound)."""

    def subscription_gap(self) -> None:
        """The event subscription reconnected: events in between are re-read from the logs."""


NOBODY = Observer()
