#!/usr/bin/env python3
"""The SRTP media policy's cost per offer or answer, in one process.

    python bench/bench_media.py [--count 20000] [--runs 5]

Times ``sipshield.security.srtp_refusal`` (the one verdict of the ``media``
stage and its answer filter: find the SDP by Content-Type, read its media
sections, judge them) on the SDP bodies a call carries: plain RTP as SIPp
and most desk phones send it, SDES, a WebRTC-style DTLS-SRTP offer with ICE
candidates, and a multipart/mixed body with an SDP part.  A call pays it
about twice (the offer in the INVITE, the answer in the 200; a 183 with SDP
once more).  ``bench/bench_call.py --srtp off|prefer|mandatory`` measures the
same through the whole proxy.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sipshield.message import Request  # noqa: E402
from sipshield.security import srtp_refusal  # noqa: E402

HEAD = "v=0\r\no=caller 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
KEY = "inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz"
FP = "sha-256 4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB:4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF"
BODIES = {
    "plain RTP/AVP (SIPp)": ("application/sdp", HEAD + "m=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"),
    "SDES RTP/SAVP, 2 keys": ("application/sdp", HEAD + "m=audio 6000 RTP/SAVP 0 8\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
                              f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 {KEY}\r\na=crypto:2 AES_CM_128_HMAC_SHA1_32 {KEY}\r\n"),
    "DTLS-SRTP audio+video, ICE": ("application/sdp", HEAD + f"a=fingerprint:{FP}\r\na=group:BUNDLE 0 1\r\n" + "".join(
        f"m={kind} 9 UDP/TLS/RTP/SAVPF 111 96\r\na=mid:{n}\r\na=setup:actpass\r\na=ice-ufrag:F7gI\r\na=ice-pwd:x9cml/YzichV2+XlhiMu8g\r\n"
        + "".join(f"a=candidate:{c} 1 udp 2130706431 192.0.2.{c} {50000 + c} typ host\r\n" for c in range(1, 5))
        + "a=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\na=rtpmap:96 VP8/90000\r\n" for n, kind in enumerate(("audio", "video")))),
    "multipart/mixed, SDP + ISUP": ('multipart/mixed;boundary="b1"', "--b1\r\nContent-Type: application/sdp\r\n\r\n" + HEAD
                                    + "m=audio 6000 RTP/AVP 0\r\n\r\n--b1\r\nContent-Type: application/isup\r\n\r\n\x01\x00\r\n--b1--\r\n"),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(f"| body | bytes | us per verdict (best of {args.runs} x {args.count}) | verdict |")
    print("|---|---|---|---|")
    for name, (content_type, text) in BODIES.items():
        request = Request("INVITE", "sip:bob@example.com", [("Content-Type", content_type)], text.encode())
        best = float("inf")
        for _ in range(args.runs):
            started = time.process_time()
            for _ in range(args.count):
                srtp_refusal(request, "UDP")
            best = min(best, time.process_time() - started)
        verdict = srtp_refusal(request, "UDP")
        print(f"| {name} | {len(request.body)} | {best * 1e6 / args.count:.2f} | {'pass' if verdict is None else verdict.text} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
