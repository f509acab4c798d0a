"""sipshield: a transaction-stateful SIP proxy framework on Twisted."""

__version__ = "0.1.0"
