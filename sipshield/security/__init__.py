"""The shield: the protections that decide what a sender may cost us
(bans, also in the kernel through nftables, scanner blocking, rate limits,
ACLs, overload shedding, toll-fraud and the SRTP media policy), each
observing the security events or answering the transports' and the
admission step's questions."""

from sipshield.security._admission import SCANNER_USER_AGENTS, Bucket, RateLimiter, ScannerBlock, UserRateLimiter, build_admission_steps
from sipshield.security._bans import BanFile, BanObserver, BanPolicy, ban_key, build_ban_policy
from sipshield.security._media import SRTP_MODES, MediaPolicy, MediaRefusal, srtp_refusal
from sipshield.security._nftables import NftBanSet, NftPorts, NftProcess, NftResult, build_nft_ban_set
from sipshield.security._overload import INTERVAL, OverloadShedding, ReactorLag, build_overload, overload_refusal

__all__ = [
    "INTERVAL", "SCANNER_USER_AGENTS", "SRTP_MODES", "BanFile", "BanObserver", "BanPolicy", "Bucket", "MediaPolicy", "MediaRefusal", "NftBanSet",
    "NftPorts", "NftProcess", "NftResult", "OverloadShedding", "RateLimiter", "ReactorLag", "ScannerBlock", "UserRateLimiter", "ban_key",
    "build_admission_steps", "build_ban_policy", "build_nft_ban_set", "build_overload", "overload_refusal", "srtp_refusal",
]
