"""Configuration, read from the environment with the prefix ``INFERHUB_``.

The CLI flags carry the same names (``--redis-url`` is ``INFERHUB_REDIS_URL``).
"""

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from contract.connection import SENTINEL_FORM, check_url


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INFERHUB_", extra="ignore")

    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description=f"One Redis (redis://host:port/db), or a master watched by Sentinel: "
        f"{SENTINEL_FORM} (docs/operations.md, Sentinel).",
    )
    redis_wait_replicas: int = Field(
        0,
        ge=0,
        description="Replicas that must hold a new job (Redis WAIT) before it is acknowledged "
        "(202), so that a failover cannot lose it; 0: no wait.",
    )
    redis_wait_timeout_s: float = Field(
        1.0,
        gt=0,
        description="How long a new job waits for those replicas; then 503 (the job may exist: "
        "retry with its Idempotency-Key).",
    )
    models: Path = Field(Path("models"), description="The model repository (Triton layout).")
    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int = Field(
        8001,
        ge=0,
        le=65535,
        description="Where the hub serves Triton's GRPCInferenceService (on `host`); 0: no gRPC.",
    )
    job_ttl_s: int = Field(24 * 3600, gt=0, description="How long job records and events live.")
    max_body_bytes: int = Field(32 * 1024 * 1024, gt=0)
    max_parameters_bytes: int = Field(
        16 * 1024, gt=0, description="What a job's `parameters` may hold, as JSON; then 413."
    )
    inline_output_bytes: int = Field(
        64 * 1024,
        ge=0,
        description="Outputs up to this size (packed) ride inline in the succeeded event and "
        "the job; larger ones are a summary and the outputs URL.",
    )
    max_wait_s: float = Field(60.0, gt=0, description="The longest `Prefer: wait` honoured.")
    job_stream_maxlen: int = Field(10_000, gt=0, description="Events kept per job.")
    heartbeat_s: float = Field(2.0, gt=0, description="How often a worker says it is alive.")
    repository_poll_s: float = Field(
        5.0,
        ge=0,
        description="How often a worker rescans its model repository for new, changed or "
        "removed models and versions (Triton's poll mode); 0: only on a load or unload.",
    )
    poll_delay_s: float = Field(
        1.0, gt=0, description="Safety-net poll of an idle worker; queued jobs wake it at once."
    )
    max_jobs: int = Field(64, gt=0, description="Jobs one worker runs at once.")
    pool: str = "default"
    events_maxlen: int = Field(100_000, gt=0, description="Events kept in the all-jobs log.")
    slow_consumer_s: float = Field(
        10.0, gt=0, description="A client whose buffer stays full this long is disconnected."
    )
    subscriber_buffer: int = Field(256, gt=0, description="Events buffered per connection.")
    subscriber_buffer_bytes: int = Field(
        32 * 1024 * 1024, gt=0, description="Bytes of events buffered per connection."
    )
    max_streams_per_tenant: int = Field(
        100, gt=0, description="Event streams (SSE, WebSocket) a tenant may hold open per hub."
    )
    max_queued_per_tenant: int = Field(
        1_000, gt=0, description="Jobs a tenant may have waiting to start; then 429."
    )
    max_stored_bytes_per_tenant: int = Field(
        2 * 1024**3,
        gt=0,
        description="Bytes of inputs and parameters a tenant's jobs of the last TTL may store.",
    )
    ws_max_subscriptions: int = Field(1000, gt=0)
    ws_max_message_bytes: int = Field(1024 * 1024, gt=0)
    stats_interval_s: float = Field(
        2.0, gt=0, description="How often a WebSocket that asked gets the deployment's stats."
    )
    api_keys_file: Path | None = Field(None, description="TOML file of API keys; none: open hub.")
    insecure: bool = Field(False, description="Serve beyond loopback with no API keys.")
    allowed_origins: list[str] = Field(
        default_factory=list, description="Browser origins allowed to call the hub (CORS, WS)."
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names the hub answers to besides loopback ones; with no API keys only "
        "loopback names are accepted unless listed here ('*': any).",
    )
    metrics_token: SecretStr | None = Field(
        None, description="A bearer token that may read /metrics (else an admin key)."
    )
    max_queued: int = Field(10_000, gt=0, description="Jobs a pool's queue holds; then 429.")
    online_max_rows: int = Field(
        65_536,
        gt=0,
        description="Rows of online (/v2 infer) requests a hub holds per pool, waiting or in "
        "flight; then 503 with Retry-After.",
    )
    rate_limit_per_s: float = Field(
        0, ge=0, description="Submissions per tenant per second; 0: off."
    )
    rate_burst: int = Field(100, gt=0, description="Submissions a tenant may make at once.")
    shutdown_grace_s: float = Field(
        10.0, gt=0, description="On SIGTERM a hub closes its streams and exits within this."
    )
    log_format: Literal["text", "json"] = Field("text", description="Log lines: text or json.")
    webhook_allowed_hosts: list[str] = Field(
        default_factory=lambda: ["127.0.0.1", "localhost", "::1"],
        description="Where webhooks may go: host names, '*.example.org', '*' (any name), and "
        "addresses or networks ('10.0.0.0/8'); an address that is not public must be listed "
        "as one, whatever its name (hub/webhooks/targets.py).",
    )
    webhook_secret: SecretStr | None = Field(
        None,
        description="The whsec_ secret that signs a keyless hub's webhooks (a keyed hub signs "
        "with each tenant's, from the keys file); unset: a keyless hub takes no webhook.",
    )
    webhook_timeout_s: float = Field(10.0, gt=0, description="One webhook delivery attempt.")
    webhook_backoff_s: float = Field(
        2.0, gt=0, description="The wait before a failed webhook's first retry; doubled each time."
    )
    webhook_backoff_max_s: float = Field(
        300.0, gt=0, description="The longest wait between two attempts of a webhook."
    )
    webhook_concurrency: int = Field(16, gt=0, description="Deliveries one hub sends at once.")

    @field_validator("redis_url")
    @classmethod
    def _known_redis_url(cls, url: str) -> str:
        return check_url(url)
