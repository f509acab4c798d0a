"""Reloading the TLS files (``sipshield tls reload``, ``sipshield reload``,
SIGHUP) on the service, without sockets: a key that does not match its
certificate is refused and logged with the certificate in use kept, and a
configuration file reload whose TLS files are bad changes nothing at all
(the sections it would have reloaded included).  The real twistd run is
tests/e2e/test_tls_operations.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cert_support import make_leaf, write_pem
from cryptography import x509
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher

from sipshield.config import ConfigError, load_config
from sipshield.service import SIPShieldService, makeService

BASE = (
    '[server]\ndata_dir = "data"\nlisten = ["tls:0:interface=127.0.0.1"]\n[admin]\nenabled = false\n[tls]\ncertificate = "cert.pem"\nprivate_key = "key.pem"\n'
)


def _pair(tmp_path: Path, cn: str) -> x509.Certificate:
    cert, key = make_leaf(cn, [x509.DNSName(cn)])
    write_pem(tmp_path / "cert.pem", cert)
    write_pem(tmp_path / "key.pem", key=key)
    return cert


def _served(service: SIPShieldService) -> x509.Certificate:
    assert service.tls_context is not None
    return service.tls_context.material.certificate


@pytest.fixture
def errors() -> Any:
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_level") is not None and event["log_level"].name in ("error", "critical"):
            from twisted.logger import formatEvent

            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


def _service(tmp_path: Path, text: str = BASE) -> SIPShieldService:
    (tmp_path / "sipshield.toml").write_text(text)
    service = makeService(load_config(tmp_path / "sipshield.toml"), reactor=MemoryReactorClock())
    service._prepare_data_dir()
    service._prepare_tls()
    return service


def test_a_key_that_does_not_match_is_refused_logged_and_the_served_certificate_kept(tmp_path: Path, errors: list[str]) -> None:
    first = _pair(tmp_path, "a.example.com")
    service = _service(tmp_path)
    assert _served(service) == first
    second = _pair(tmp_path, "b.example.com")
    assert service.reload_tls()["subject"] == "CN=b.example.com"
    assert _served(service) == second and errors == []
    write_pem(tmp_path / "cert.pem", make_leaf("c.example.com", None)[0])  # the key stays b's
    with pytest.raises(ConfigError, match=r"tls\.private_key: .*key\.pem does not match the certificate in .*cert\.pem"):
        service.reload_tls()
    assert _served(service) == second
    assert len(errors) == 1 and errors[0].startswith("TLS certificate not reloaded, the one in use kept: ") and "does not match" in errors[0]


def test_a_file_reload_with_bad_tls_files_changes_no_section_either(tmp_path: Path) -> None:
    first = _pair(tmp_path, "a.example.com")
    service = _service(tmp_path)
    (tmp_path / "sipshield.toml").write_text(BASE + '[[acl.rules]]\naction = "deny"\nnetworks = ["192.0.2.0/24"]\n')
    (tmp_path / "key.pem").write_text("not a key")
    with pytest.raises(ConfigError, match="tls.private_key"):
        service.reload_from_file()
    assert service.config.acl.rules == () and _served(service) == first  # the ACL was not taken on without its certificate
    second = _pair(tmp_path, "b.example.com")
    done = service.reload_from_file()
    assert done["reloaded"] == ["acl"] and done["tls"]["subject"] == "CN=b.example.com"
    assert len(service.config.acl.rules) == 1 and _served(service) == second
