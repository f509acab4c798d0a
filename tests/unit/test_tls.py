"""TLS material: self-signed generation, file checks and errors naming the key."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from sipshield.config import ConfigError, TLSConfig
from sipshield.transport import ServerTLSContext, generate_self_signed, load_tls_material
from sipshield.transport._tls import SELF_SIGNED_CERT, SELF_SIGNED_KEY


def test_self_signed_key_is_private_and_loads(tmp_path: Path) -> None:
    cert, key = tmp_path / SELF_SIGNED_CERT, tmp_path / SELF_SIGNED_KEY
    generate_self_signed(cert, key, ["example.com", "127.0.0.1"])
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    material = load_tls_material(TLSConfig(), tmp_path)
    assert material is not None
    names = str(material.certificate.to_cryptography().extensions)
    assert "example.com" in names and "127.0.0.1" in names and "sip:example.com" in names
    context = ServerTLSContext(material)
    assert context.getContext() is not None


def test_no_generated_pair_yet_means_none(tmp_path: Path) -> None:
    assert load_tls_material(TLSConfig(), tmp_path) is None


def test_unreadable_certificate_names_key_and_file(tmp_path: Path) -> None:
    tls = TLSConfig(certificate=tmp_path / "missing.pem", private_key=tmp_path / "missing.key")
    with pytest.raises(ConfigError) as info:
        load_tls_material(tls, tmp_path, source="site.toml")
    assert str(info.value) == f"site.toml: tls.certificate: cannot read {tmp_path / 'missing.pem'}: No such file or directory"


def test_garbage_certificate_and_mismatched_key_are_refused(tmp_path: Path) -> None:
    generate_self_signed(tmp_path / "a.pem", tmp_path / "a.key", ["a.example"])
    generate_self_signed(tmp_path / "b.pem", tmp_path / "b.key", ["b.example"])
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match="tls.certificate: .*junk.pem holds no PEM certificate"):
        load_tls_material(TLSConfig(certificate=tmp_path / "junk.pem", private_key=tmp_path / "a.key"), tmp_path)
    with pytest.raises(ConfigError, match="tls.private_key: .*b.key does not match the certificate"):
        load_tls_material(TLSConfig(certificate=tmp_path / "a.pem", private_key=tmp_path / "b.key"), tmp_path)
    with pytest.raises(ConfigError, match="tls.client_ca: cannot read"):
        load_tls_material(TLSConfig(client_ca=tmp_path / "ca.pem"), tmp_path)
