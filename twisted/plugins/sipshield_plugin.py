# twistd dropin: keep it cheap to import; the real code is in sipshield.tap.
from twisted.application.service import ServiceMaker

sipshield = ServiceMaker("sipshield", "sipshield.tap", "sipshield SIP proxy and registrar with a pluggable security layer", "sipshield")
