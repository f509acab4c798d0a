"""Authentication: SIP digest (RFC 7616, RFC 8760), nonces, credential stores."""

from sipshield.auth._bearer import BearerChecker, BearerCredentials, BearerSettings, BearerValidator, InvalidToken, parse_bearer
from sipshield.auth._credentials import ISIPDigestCredentials, SIPDigestCredentials
from sipshield.auth._digest import ALGORITHMS, DigestResponse, challenge_values, compute_ha1, verify
from sipshield.auth._htdigest import HtdigestUserStore
from sipshield.auth._keys import KeyFile, KeyFileError
from sipshield.auth._mtls import TrunkAccount, TrunkMap, certificate_identities
from sipshield.auth._nonce import NonceManager, SharedNonceCounts, load_or_create_secret, load_secret
from sipshield.auth._users import CredentialStoreError, UnknownUserError, UserRecord, UserStore

__all__ = [
    "ALGORITHMS",
    "BearerChecker",
    "BearerCredentials",
    "BearerSettings",
    "BearerValidator",
    "InvalidToken",
    "KeyFile",
    "KeyFileError",
    "TrunkAccount",
    "TrunkMap",
    "certificate_identities",
    "parse_bearer",
    "CredentialStoreError",
    "DigestResponse",
    "HtdigestUserStore",
    "ISIPDigestCredentials",
    "NonceManager",
    "SIPDigestCredentials",
    "SharedNonceCounts",
    "UnknownUserError",
    "UserRecord",
    "UserStore",
    "challenge_values",
    "compute_ha1",
    "load_or_create_secret",
    "load_secret",
    "verify",
]
