"""RFC 3261 section 16 proxy core: validation, forwarding, response context,
and what the pipeline it runs sees (RequestContext) and returns (Decision)."""

from sipshield.proxy._core import ProxyCore
from sipshield.proxy._decision import CONTINUE, DROP, BranchCheck, Decision, RequestContext, RequestPipeline, ResponseFilter, Target
from sipshield.proxy._forward import endpoints
from sipshield.proxy._response import ResponseContext
from sipshield.proxy._signer import RecordRouteSigner

__all__ = [
    "CONTINUE",
    "DROP",
    "BranchCheck",
    "Decision",
    "ProxyCore",
    "RecordRouteSigner",
    "RequestContext",
    "RequestPipeline",
    "ResponseContext",
    "ResponseFilter",
    "Target",
    "endpoints",
]
