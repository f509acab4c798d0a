"""The shield: the protections that decide what a sender may cost us
(bans, also in the kernel through nftables, scanner blocking and rate limits today; ACLs, toll-fraud and media
policy are coming), each observing the security events or answering the
transports' and the admission step's questions."""

from sipshield.security._admission import SCANNER_USER_AGENTS, Bucket, RateLimiter, ScannerBlock, build_admission_steps
from sipshield.security._bans import BanFile, BanObserver, BanPolicy, ban_key, build_ban_policy
from sipshield.security._nftables import NftBanSet, NftPorts, NftProcess, NftResult, build_nft_ban_set

__all__ = [
    "SCANNER_USER_AGENTS", "BanFile", "BanObserver", "BanPolicy", "Bucket", "NftBanSet", "NftPorts", "NftProcess", "NftResult", "RateLimiter",
    "ScannerBlock", "ban_key", "build_admission_steps", "build_ban_policy", "build_nft_ban_set",
]
