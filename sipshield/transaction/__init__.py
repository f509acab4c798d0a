"""The RFC 3261 section 17 transaction layer, with the RFC 6026 Accepted states.

:class:`TransactionLayer` owns the client and server transaction tables,
matches messages to transactions (RFC 3261 17.1.3, 17.2.3, including the
RFC 2543 rules) and runs the four state machines on an injected
``IReactorTime``. It is synchronous: no Deferreds, no logging per message.
See docs/transactions.md for the state diagrams and the timer table.
"""

from ._base import ACCEPTED, CALLING, COMPLETED, CONFIRMED, PROCEEDING, TERMINATED, TRYING, Destination, Sender, TimerSettings, TransactionUser
from ._client import ClientTransaction, InviteClientTransaction, NonInviteClientTransaction, ResponseCallback, TransactionCallback, build_ack
from ._keys import MAGIC_COOKIE
from ._layer import TransactionLayer
from ._server import InviteServerTransaction, NonInviteServerTransaction, ServerTransaction

__all__ = [
    "ACCEPTED",
    "CALLING",
    "COMPLETED",
    "CONFIRMED",
    "MAGIC_COOKIE",
    "PROCEEDING",
    "TERMINATED",
    "TRYING",
    "ClientTransaction",
    "Destination",
    "InviteClientTransaction",
    "InviteServerTransaction",
    "NonInviteClientTransaction",
    "NonInviteServerTransaction",
    "ResponseCallback",
    "Sender",
    "ServerTransaction",
    "TimerSettings",
    "TransactionCallback",
    "TransactionLayer",
    "TransactionUser",
    "build_ack",
]
