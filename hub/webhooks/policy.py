"""What a hub checks when a job names a webhook, and the secret each tenant's are signed with.

A keyed hub signs with each tenant's own secret, kept in the keys file (``inferhub keys``); a
keyless hub, which has one tenant, with ``INFERHUB_WEBHOOK_SECRET``. A hub with no secret at all
takes no webhook and runs no sender, so that it never claims a delivery it cannot sign.
"""

from __future__ import annotations

from contract.errors import InvalidInput
from contract.settings import Settings
from hub.auth import KeyRing
from hub.webhooks import signing
from hub.webhooks.targets import Targets


class WebhookPolicy:
    def __init__(self, targets: Targets, keyring: KeyRing, keyless_secret: str | None) -> None:
        if keyless_secret is not None:
            try:
                signing.secret_key(keyless_secret)
            except ValueError as exc:
                raise ValueError(f"INFERHUB_WEBHOOK_SECRET: {exc}") from None
        self.targets = targets
        self.keyring = keyring
        self.keyless_secret = keyless_secret

    @classmethod
    def of(cls, settings: Settings, keyring: KeyRing) -> WebhookPolicy:
        secret = settings.webhook_secret
        return cls(
            Targets(settings.webhook_allowed_hosts, resolve_timeout_s=settings.webhook_timeout_s),
            keyring,
            secret.get_secret_value() if secret is not None else None,
        )

    @property
    def signs(self) -> bool:
        """Whether this hub holds any secret, so may send deliveries."""
        return self.keyless_secret is not None if self.keyring.open else self.keyring.signs

    def secret(self, tenant: str) -> str | None:
        if self.keyring.open:
            return self.keyless_secret
        return self.keyring.webhook_secret(tenant)

    async def check(self, url: str, tenant: str) -> None:
        """A job of ``tenant`` may name ``url``; else a 422 that says what to set."""
        if self.secret(tenant) is None:
            if self.keyring.open:
                how = (
                    "this hub has no webhook secret to sign with: set INFERHUB_WEBHOOK_SECRET "
                    "(inferhub keys webhook-secret prints a new one)"
                )
            else:
                how = (
                    f"tenant '{tenant}' has no webhook secret to sign with: create one with "
                    f"inferhub keys webhook-secret --tenant {tenant}, then restart the hub"
                )
            raise InvalidInput(how, "webhook_secret_missing")
        await self.targets.resolve(url)
