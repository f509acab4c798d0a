"""The shield: the protections that decide what a sender may cost us
(bans, scanner blocking and rate limits today; ACLs, toll-fraud and media
policy are coming), each observing the security events or answering the
transports' and the admission step's questions."""

from sipshield.security._admission import SCANNER_USER_AGENTS, Bucket, RateLimiter, ScannerBlock, build_admission_steps
from sipshield.security._bans import BanFile, BanPolicy, ban_key, build_ban_policy

__all__ = [
    "SCANNER_USER_AGENTS", "BanFile", "BanPolicy", "Bucket", "RateLimiter", "ScannerBlock", "ban_key", "build_admission_steps", "build_ban_policy",
]
