"""Thousands of bans: the time to build the nft script for a resync and for a burst
of changes (run: PYTHONPATH=. python attack/nft_many_bans.py). No nft is run."""
import time

from twisted.internet.task import Clock

from sipshield.config import NftablesConfig
from sipshield.security import NftBanSet
from sipshield.security._nftables import NftPorts
from sipshield.state import Ban

for n in (500, 4000, 25000):
    bans = [Ban(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 900.0, "x") for i in range(n)]
    bans += [Ban(f"2001:db8:{i:x}::/64", 900.0, "x") for i in range(n)]
    clock = Clock()
    nft = NftBanSet(clock, NftablesConfig(), lambda script: None, lambda held=bans: held)  # type: ignore[arg-type,return-value]
    nft.ports = NftPorts(udp=(5060,), tcp=(5060, 5061))
    nft._resync = True
    t = time.perf_counter()
    lines = nft.script()
    print(f"{2 * n:6} bans: resync script {len(lines)} lines, {sum(map(len, lines)) / 1e6:.1f} MB, {time.perf_counter() - t:.3f} s")
