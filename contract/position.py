"""Where a reader of the all-jobs feed is: a position per pool (each pool's log has ids of its
own node's clock, which do not compare with another's), as text in a feed's resume token."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from contract import keys
from contract.events import Event, stream_key


@functools.lru_cache(maxsize=1024)
def _pool_named(name: str) -> str:
    """``keys.pool_of`` of a job id whose pool part is ``name``, checked once per name (the
    fan-out moves two positions per event)."""
    return keys.pool_of(f"{name}.")


@dataclass(frozen=True)
class Position:
    """Where a reader of the all-jobs feed is: the id of the last event it has of each pool,
    and ``base`` for the pools it does not name. Ids of two pools' logs do not compare (each
    log's ids come from its own node's clock), so only a position per pool resumes exactly.

    As text (a feed's resume token): ``base[,pool:id...]``, as ``0,default:1700000000000-3``;
    a plain event id is a position with that base and no pool, as before pools had logs.
    """

    base: tuple[int, int] = (0, 0)
    pools: Mapping[str, tuple[int, int]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Position:
        """The position a token says; ValueError for anything else."""
        base, *named = text.split(",")
        pools = {}
        for part in named:
            pool, colon, event_id = part.partition(":")
            if not colon or keys.pool_of(f"{pool}.") != pool or not pool:
                raise ValueError(f"{part[:60]!r} is not pool:event-id")
            pools[pool] = stream_key(event_id)
        return cls(stream_key(base), pools)

    def of(self, pool: str) -> tuple[int, int]:
        return self.pools.get(pool, self.base)

    def past(self, events: Sequence[Event]) -> Position:
        """This position moved past ``events`` (each pool's to its last one's id)."""
        pools = dict(self.pools)
        for event in events:
            pool = _pool_named(event.job_id.rpartition(".")[0])
            key = event.key
            if key > pools.get(pool, self.base):
                pools[pool] = key
        return Position(self.base, pools)

    def __str__(self) -> str:
        named = "".join(f",{pool}:{ms}-{seq}" for pool, (ms, seq) in sorted(self.pools.items()))
        return f"{self.base[0]}-{self.base[1]}{named}"
