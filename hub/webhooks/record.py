"""A job's webhook in its record (``contract/records.py``, the ``webhook_*`` fields): what the
service writes when the job is created, and what clients see of it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hub.schemas import Webhook


def fields(webhook: Webhook) -> dict[str, str]:
    """The fields that name the webhook; the job scripts read ``webhook_on`` (space-separated
    statuses) to queue its deliveries (contract/lua/append.lua)."""
    return {
        "webhook_url": webhook.url,
        "webhook_on": " ".join(dict.fromkeys(e.value for e in webhook.events)),
    }


def view(record: Mapping[str, Any]) -> dict[str, Any]:
    """The webhook and how its deliveries went: attempts for all its events, the last one's
    HTTP status (None: it got no answer) or why it failed, when an event was last delivered."""
    shown = {
        "url": record["webhook_url"],
        "events": record.get("webhook_on", "").split(),
        "attempts": record.get("webhook_attempts", 0),
        "last_status": record.get("webhook_status"),
        "last_error": record.get("webhook_error"),
    }
    if "webhook_delivered_at" in record:
        shown["delivered_at"] = record["webhook_delivered_at"]
    return shown
