"""docs/operations/incident-playbook.md, run: every ``$ sipshield`` line of
it, in order, against a real twistd sipshield (its own config in place of
/etc/sipshield/sipshield.toml), and what each step claims checked on the
server: the ban drops the source, the lifted ban lets it in, a phone's
registration is listed, the reloaded certificate is the one served."""

from __future__ import annotations

import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

from cert_support import make_leaf, served_subject, write_pem
from conftest import ephemeral_config
from cryptography import x509

ROOT = Path(__file__).resolve().parent.parent.parent
PLAYBOOK = ROOT / "docs" / "operations" / "incident-playbook.md"
OFFENDER = "203.0.113.7"


def playbook_commands() -> list[list[str]]:
    commands = [line[2:] for line in PLAYBOOK.read_text().splitlines() if line.startswith("$ sipshield ")]
    assert len(commands) >= 6
    return [shlex.split(c) for c in commands]


def _options(udp: tuple[str, int], source: str) -> bytes | None:
    """Send OPTIONS to the proxy from *source*; its answer, or None in 1 s."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        port = s.getsockname()[1]
        s.sendto((f"OPTIONS sip:{udp[0]}:{udp[1]} SIP/2.0\r\nVia: SIP/2.0/UDP {source}:{port};branch=z9hG4bKpb{port}\r\n"
                  f"From: <sip:ops@example.com>;tag=1\r\nTo: <sip:{udp[0]}>\r\nCall-ID: pb{port}\r\nCSeq: 1 OPTIONS\r\n"
                  "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode(), udp)
        s.settimeout(1.0)
        try:
            return s.recv(65535)
        except TimeoutError:
            return None


def test_every_playbook_command_works_against_a_running_server(start_server, tmp_path: Path) -> None:
    cert, key = make_leaf("old.example.com", [x509.DNSName("old.example.com")])
    write_pem(tmp_path / "cert.pem", cert)
    write_pem(tmp_path / "key.pem", key=key)
    alerts = '[[alerts.rules]]\nname = "auth-failure-surge"\nkind = "event_rate"\nevent = "auth-failure"\nmore_than = 20\nwindow = 30\n'
    server = start_server(ephemeral_config(extra='[tls]\ncertificate = "cert.pem"\nprivate_key = "key.pem"\n' + alerts))
    match = server.wait_for(r"admin API listening on (http://127\.0\.0\.1:\d+)/v1/")
    url = match.group(1)
    config = str(tmp_path / "sipshield.toml")
    udp, tls = server.addresses["udp"], server.addresses["tls"]
    # a phone registers (from a trusted loopback address: no digest needed for this test)
    register = ("REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKpbreg\r\n"
                "From: <sip:alice@example.com>;tag=r1\r\nTo: <sip:alice@example.com>\r\nCall-ID: pbreg\r\nCSeq: 1 REGISTER\r\n"
                "Contact: <sip:alice@127.0.0.1:5999>\r\nUser-Agent: DeskPhone/2.1\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.sendto(register.encode(), udp)
        s.settimeout(5)
        assert s.recv(65535).startswith(b"SIP/2.0 200"), "the phone did not register"
    assert _options(udp, "127.0.0.9") is not None  # an address the playbook does not ban is answered

    outputs: list[str] = []
    for argv in playbook_commands():
        argv = [config if a == "/etc/sipshield/sipshield.toml" else a for a in argv]
        argv = [a.replace(OFFENDER, "127.0.0.7") for a in argv]  # a loopback address this test can send from
        if argv[1:3] == ["tls", "reload"]:
            new_cert, new_key = make_leaf("new.example.com", [x509.DNSName("new.example.com")])
            write_pem(tmp_path / "cert.pem", new_cert)
            write_pem(tmp_path / "key.pem", key=new_key)
        api = [] if argv[1] == "check-config" else ["--url", url]  # check-config reads the file, not the server
        result = subprocess.run([sys.executable, "-m", "sipshield.cli", *argv[1:], *api], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{shlex.join(argv)}\n{result.stdout}\n{result.stderr}"
        outputs.append(result.stdout)
        if argv[1:3] == ["ban", "add"]:
            assert _options(udp, "127.0.0.7") is None, "the banned source was still answered"
            assert _options(udp, "127.0.0.9") is not None
        if argv[1:3] == ["ban", "remove"]:
            assert _options(udp, "127.0.0.7") is not None, "the lifted ban still dropped the source"
    text = "\n".join(outputs)
    assert re.search(r"^top talkers by auth failures since .*\nsource\trequests\tauth failures\tbanned$", text, re.M)
    assert re.search(r"^127\.0\.0\.9\t1\t0\tno$", text, re.M)  # the OPTIONS above, in top by requests
    assert re.search(r"^(rates over the last [\d.]+ s: requests |rates: not measured yet)", text, re.M)
    assert re.search(r"^listening: udp 127\.0\.0\.1:\d+$", text, re.M)
    assert re.search(r"^127\.0\.0\.7\tuntil .*toll-fraud attempts, ticket 4711", text, re.M)
    assert "sip:alice@example.com\tsip:alice@127.0.0.1:5999\t" in text and "DeskPhone/2.1" in text
    assert "now serving CN=new.example.com" in text
    assert re.search(r"alerts: 1 rule\(s\) \(auth-failure-surge\), sent to log$", text, re.M)
    assert "new.example.com" in served_subject(tls[1])
    assert re.search(r"^pipeline +\w+ +.*<- decides here$", text, re.M) and "outcome: answer " in text  # explain, as alice
    server.wait_for(r"security event ban from 127\.0\.0\.7 over admin")
