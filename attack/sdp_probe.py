"""Probe the SDP reader with bodies a phone may read differently (run: PYTHONPATH=. python attack/sdp_probe.py).
Prints PASS for an SDP that the mandatory policy lets through."""
from sipshield.message import parse_message
from sipshield.security import srtp_refusal

KEY = "inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz"
HEAD = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
PLAIN = HEAD + "m=audio 49170 RTP/AVP 0\r\n"
SDES = HEAD + f"m=audio 49170 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 {KEY}\r\n"


def msg(headers: str, body: str) -> str:
    head = ("INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.2:5061;branch=z9hG4bK1\r\nMax-Forwards: 70\r\n"
            "From: <sip:a@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\nCall-ID: 1\r\nCSeq: 1 INVITE\r\n")
    return head + headers + f"Content-Length: {len(body.encode())}\r\n\r\n" + body


def mp(boundary: str, parts: list[str], close: str = "") -> str:
    out = "".join(f"--{boundary}\r\n{p}\r\n" for p in parts)
    return out + (close or f"--{boundary}--\r\n")


CASES = {
    "two top-level Content-Type, sdp last": ("Content-Type: text/plain\r\nContent-Type: application/sdp\r\n", PLAIN),
    "two top-level Content-Type, sdp first": ("Content-Type: application/sdp\r\nContent-Type: text/plain\r\n", PLAIN),
    "c: then Content-Type": ("c: text/plain\r\nContent-Type: application/sdp\r\n", PLAIN),
    "part: two Content-Type, sdp first": ("Content-Type: multipart/mixed;boundary=b\r\n",
        mp("b", ["Content-Type: application/sdp\r\nContent-Type: text/plain\r\n\r\n" + PLAIN])),
    "part: compact c: header": ("Content-Type: multipart/mixed;boundary=b\r\n", mp("b", ["c: application/sdp\r\n\r\n" + PLAIN])),
    "duplicate boundary param (first used by phone)": ("Content-Type: multipart/mixed;boundary=a;boundary=b\r\n",
        mp("a", ["Content-Type: application/sdp\r\n\r\n" + PLAIN]) + mp("b", ["Content-Type: text/plain\r\n\r\nhi"])),
    "duplicate boundary param (last used by phone)": ("Content-Type: multipart/mixed;boundary=b;boundary=a\r\n",
        mp("a", ["Content-Type: application/sdp\r\n\r\n" + PLAIN]) + mp("b", ["Content-Type: text/plain\r\n\r\nhi"])),
    "AES_CM_128_NULL_AUTH suite": ("Content-Type: application/sdp\r\n",
        HEAD + f"m=audio 49170 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_NULL_AUTH {KEY}\r\n"),
    "NULL suite listed first, good second": ("Content-Type: application/sdp\r\n",
        HEAD + f"m=audio 49170 RTP/SAVP 0\r\na=crypto:1 NULL_HMAC_SHA1_80 {KEY}\r\na=crypto:2 AES_CM_128_HMAC_SHA1_80 {KEY}\r\n"),
    "LF only": ("Content-Type: application/sdp\r\n", PLAIN.replace("\r\n", "\n")),
    "CR only": ("Content-Type: application/sdp\r\n", PLAIN.replace("\r\n", "\r")),
    "m= with tab": ("Content-Type: application/sdp\r\n", HEAD + "m=audio\t49170\tRTP/AVP 0\r\n"),
    "second SDP after blank line": ("Content-Type: application/sdp\r\n", SDES + "\r\n" + PLAIN),
    "NUL inside": ("Content-Type: application/sdp\r\n", SDES.replace("m=audio 49170 RTP/SAVP", "m=audio 49170 RTP/SAVP\x00")),
    "application/sdp with uppercase + params": ("Content-Type: Application/SDP ; charset=utf-8\r\n", PLAIN),
    "epilogue SDP after close": ("Content-Type: multipart/mixed;boundary=b\r\n",
        mp("b", ["Content-Type: text/plain\r\n\r\nhi"]) + "--b\r\nContent-Type: application/sdp\r\n\r\n" + PLAIN + "--b--\r\n"),
    "preamble delimiter-ish": ("Content-Type: multipart/mixed;boundary=b\r\n", "--b \r\nContent-Type: application/sdp\r\n\r\n" + PLAIN + "--b--\r\n"),
    "multipart/alternative sdp + plain": ("Content-Type: multipart/alternative;boundary=b\r\n",
        mp("b", ["Content-Type: application/sdp\r\n\r\n" + SDES, "Content-Type: application/sdp\r\n\r\n" + PLAIN])),
    "Content-Transfer-Encoding base64 on text/plain": ("Content-Type: multipart/mixed;boundary=b\r\n",
        mp("b", ["Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\nAAAA"])),
    "part CTE base64 twice": ("Content-Type: multipart/mixed;boundary=b\r\n",
        mp("b", ["Content-Type: application/sdp\r\nContent-Transfer-Encoding: base64\r\nContent-Transfer-Encoding: 7bit\r\n\r\n" + PLAIN])),
    "Content-Encoding identity then gzip": ("Content-Encoding: identity\r\ne: gzip\r\nContent-Type: application/sdp\r\n", PLAIN),
    "port 0 with plain, plus video plain": ("Content-Type: application/sdp\r\n", HEAD + "m=audio 0 RTP/AVP 0\r\nm=video 5000 RTP/AVP 96\r\n"),
    "m=audio leading zero port": ("Content-Type: application/sdp\r\n", HEAD + "m=audio 00000 RTP/AVP 0\r\n"),
    "m=image T.38 udptl": ("Content-Type: application/sdp\r\n", HEAD + "m=image 5000 udptl t38\r\n"),
    "m=audio proto RTP/AVP via m=Audio": ("Content-Type: application/sdp\r\n", HEAD + "m=AUDIO 5000 RTP/AVP 0\r\n"),
    "m=audio x port/number": ("Content-Type: application/sdp\r\n", HEAD + "m=audio 0/2 RTP/AVP 0\r\n"),
    "session-level crypto only": ("Content-Type: application/sdp\r\n", HEAD.replace("t=0 0", f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 {KEY}\r\nt=0 0") + "m=audio 5000 RTP/SAVP 0\r\n"),
    "U+2028 in line": ("Content-Type: application/sdp\r\n", PLAIN.replace("m=audio", "a=x\u2028m=audio 5000 RTP/AVP 0\r\nm=audio", 1)),
    "unicode digit port": ("Content-Type: application/sdp\r\n", HEAD + "m=audio \u0665000 RTP/AVP 0\r\n"),
    "BOM before v=0": ("Content-Type: application/sdp\r\n", "\ufeff" + PLAIN),
    "message/sipfrag nested?": ("Content-Type: message/sip\r\n", PLAIN),
    "text/plain carrying SDP (phone sniffs?)": ("Content-Type: text/plain\r\n", PLAIN),
    "application/sdp;x with space before slash": ("Content-Type: application /sdp\r\n", PLAIN),
    "no Content-Type": ("", PLAIN),
}

for name, (headers, body) in CASES.items():
    try:
        m = parse_message(msg(headers, body).encode())
    except Exception as e:  # noqa: BLE001
        print(f"{'PARSE-ERR':9} {name}: {type(e).__name__} {e}")
        continue
    try:
        r = srtp_refusal(m, None)
    except Exception as e:  # noqa: BLE001
        print(f"{'CRASH':9} {name}: {type(e).__name__} {e}")
        continue
    print(f"{'PASS' if r is None else 'refused':9} {name}: {'' if r is None else r.text[:90]}")
