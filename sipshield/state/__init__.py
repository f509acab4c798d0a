"""Shared state: the location service (RFC 3261 10.2) with memory, SQL and
Redis stores, and the shield's counters, buckets and bans."""

from sipshield.state._aor import aor_of
from sipshield.state._binding import Binding, BindingLimits
from sipshield.state._errors import BindingRefused, StoreUnavailable
from sipshield.state._expiry import ExpiryLoop
from sipshield.state._memory import MemoryLocationStore
from sipshield.state._redis import RedisShieldState, RedisStateService, RemoteBanListener, TxRedisLink, build_shield_state
from sipshield.state._redis_location import RedisLocationStore
from sipshield.state._redis_nonces import RedisNonceCounts, SharedUse
from sipshield.state._shield import Ban, MemoryShieldState, ShieldState
from sipshield.state._sql import SQLLocationStore

__all__ = [
    "Ban", "Binding", "BindingLimits", "BindingRefused", "ExpiryLoop", "MemoryLocationStore", "MemoryShieldState", "RedisLocationStore", "RedisNonceCounts", "RedisShieldState", "RedisStateService", "RemoteBanListener", "SQLLocationStore", "SharedUse", "ShieldState", "StoreUnavailable", "TxRedisLink", "aor_of", "build_shield_state",
]
