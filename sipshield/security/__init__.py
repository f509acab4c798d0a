"""The shield: the protections that decide what a sender may cost us
(bans today; rate limits, ACLs, scanner blocking, toll-fraud and media
policy are coming), each observing the security events or answering the
transports' and the admission step's questions."""

from sipshield.security._bans import BanFile, BanPolicy, ban_key, build_ban_policy

__all__ = ["BanFile", "BanPolicy", "ban_key", "build_ban_policy"]
