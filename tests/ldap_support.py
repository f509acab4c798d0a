"""A private OpenLDAP ``slapd`` for the LDAP backend tests.

:func:`start_slapd` writes a ``slapd.conf`` (core, cosine and inetorgperson
schemas from ``/etc/ldap/schema``, one mdb database) into a temporary
directory, loads :data:`BASE_LDIF` offline with ``slapadd``, starts ``slapd``
in the foreground on ``ldap://127.0.0.1:<free port>`` and waits (bounded)
until an ``ldapsearch`` gets an answer. :meth:`Slapd.stop` terminates it.
With ``tls=True`` it also generates a test CA and a server certificate (for
``127.0.0.1`` and ``localhost``) in the directory and listens on
``ldaps://127.0.0.1:<another free port>`` as well.

The directory holds the layout the LDAPChecker expects by default:
``ou=people`` with inetOrgPerson users whose ``description`` values are
``ALGORITHM:HA1:realm``, ``ou=groups`` with groupOfNames, and a read-only
service account to bind as.  A missing ``slapd`` skips the test (fails it
under CI=true, see ``conftest.require_tool``).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from conftest import require_tool, stop_process
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sipshield.auth import compute_ha1

SCHEMA_DIR = Path("/etc/ldap/schema")
MODULE_DIRS = (Path("/usr/lib/ldap"), Path("/usr/lib64/openldap"), Path("/usr/lib/openldap"))

BASE_DN = "dc=example,dc=com"
PEOPLE_DN = f"ou=people,{BASE_DN}"
GROUPS_DN = f"ou=groups,{BASE_DN}"
ROOT_DN = f"cn=admin,{BASE_DN}"
ROOT_PASSWORD = "root-secret"
SERVICE_DN = f"cn=sipshield,ou=services,{BASE_DN}"
SERVICE_PASSWORD = "service-secret"
REALM = "example.com"

#: Users in the directory: uid -> (password, groups).  Only HA1s are stored.
USERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "alice": ("alice-secret", ("sip-staff",)),
    "carol": ("carol-secret", ()),
    "dave": ("dave-secret", ()),
}
#: The algorithms every user has an HA1 for (RFC 8760).
ALGORITHMS = ("SHA-256", "SHA-512-256")
#: Group cn -> members (uids).
GROUPS = {"sip-staff": ("alice", "dave"), "sip-ops": ("carol", "dave")}

STARTUP_TIMEOUT = 15.0


def user_dn(uid: str) -> str:
    """The DN of a user entry in :data:`PEOPLE_DN`."""
    return f"uid={uid},{PEOPLE_DN}"


def ha1_value(algorithm: str, uid: str, password: str, realm: str = REALM) -> str:
    """A ``description`` value as the LDAPChecker reads it: ``ALGORITHM:HA1:realm``."""
    return f"{algorithm}:{compute_ha1(algorithm, uid, realm, password)}:{realm}"


def base_ldif() -> str:
    """The directory contents: base, ou=people, ou=groups, ou=services and their entries."""
    parts = [
        f"dn: {BASE_DN}\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n",
        f"dn: {PEOPLE_DN}\nobjectClass: organizationalUnit\nou: people\n",
        f"dn: {GROUPS_DN}\nobjectClass: organizationalUnit\nou: groups\n",
        f"dn: ou=services,{BASE_DN}\nobjectClass: organizationalUnit\nou: services\n",
        f"dn: {SERVICE_DN}\nobjectClass: person\nobjectClass: simpleSecurityObject\ncn: sipshield\nsn: service\nuserPassword: {SERVICE_PASSWORD}\n",
    ]
    for uid, (password, _groups) in USERS.items():
        values = "".join(f"description: {ha1_value(a, uid, password)}\n" for a in ALGORITHMS)
        parts.append(f"dn: {user_dn(uid)}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid.title()}\nsn: {uid.title()}\n{values}")
    for cn, members in GROUPS.items():
        lines = "".join(f"member: {user_dn(uid)}\n" for uid in members)
        parts.append(f"dn: cn={cn},{GROUPS_DN}\nobjectClass: groupOfNames\ncn: {cn}\n{lines}")
    return "\n".join(parts)


def _module_dir() -> Path | None:
    for candidate in MODULE_DIRS:
        if any(candidate.glob("back_mdb*")):
            return candidate
    return None


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def make_ca(workdir: Path, name: str = "ca") -> tuple[Path, Path]:
    """A self-signed test CA: ``(<name>.pem, <name>.key)`` in *workdir*."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"sipshield test {name}"))
        .issuer_name(_name(f"sipshield test {name}"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True  # keyCertSign, cRLSign
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = workdir / f"{name}.pem", workdir / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(_key_pem(key))
    os.chmod(key_path, 0o600)
    return cert_path, key_path


def make_server_certificate(workdir: Path, ca: tuple[Path, Path]) -> tuple[Path, Path]:
    """A server certificate for ``127.0.0.1`` (IP SAN) and ``localhost`` (DNS SAN)
    signed by *ca*: ``(server.pem, server.key)`` in *workdir*."""
    ca_cert = x509.load_pem_x509_certificate(ca[0].read_bytes())
    ca_key = serialization.load_pem_private_key(ca[1].read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = workdir / "server.pem", workdir / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(_key_pem(key))
    os.chmod(key_path, 0o600)
    return cert_path, key_path


def _slapd_conf(workdir: Path, tls: bool = False) -> str:
    schemas = "".join(f"include {SCHEMA_DIR / name}.schema\n" for name in ("core", "cosine", "inetorgperson"))
    modules = _module_dir()
    # Debian builds back_mdb as a module; other builds link it in.
    load = f"modulepath {modules}\nmoduleload back_mdb\n" if modules is not None else ""
    tls_lines = (
        f"TLSCACertificateFile {workdir / 'ca.pem'}\nTLSCertificateFile {workdir / 'server.pem'}\n"
        f"TLSCertificateKeyFile {workdir / 'server.key'}\n"
        if tls
        else ""
    )
    return (
        f"{schemas}pidfile {workdir / 'slapd.pid'}\nargsfile {workdir / 'slapd.args'}\n{load}{tls_lines}"
        f'database mdb\nmaxsize 16777216\nsuffix "{BASE_DN}"\nrootdn "{ROOT_DN}"\nrootpw {ROOT_PASSWORD}\n'
        f"directory {workdir / 'db'}\n"
        # Anyone bound may read; anonymous users may only bind (as slapd's default would not say).
        "access to attrs=userPassword by anonymous auth by * none\n"
        "access to * by users read by anonymous auth\n"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Slapd:
    """A running private slapd: its URL, directory and process."""

    workdir: Path
    port: int
    process: subprocess.Popen[bytes] | None = None
    startup_seconds: float = 0.0
    #: The ldaps port when started with ``tls=True``, else None.
    tls_port: int | None = None

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldaps_url(self) -> str:
        """``ldaps://127.0.0.1:<tls_port>``; only when started with ``tls=True``."""
        if self.tls_port is None:
            raise RuntimeError("this slapd was started without tls=True")
        return f"ldaps://127.0.0.1:{self.tls_port}"

    @property
    def ca_file(self) -> Path:
        """The PEM file of the CA that signed the server certificate (``tls=True``)."""
        return self.workdir / "ca.pem"

    def start(self) -> None:
        """Start slapd (again, on the same port and data) and wait until it answers."""
        slapd = require_tool("slapd", "slapd")
        ldapsearch = require_tool("ldapsearch", "ldap-utils")
        started = time.monotonic()
        log = (self.workdir / "slapd.log").open("wb")
        urls = [self.url] if self.tls_port is None else [self.url, self.ldaps_url]
        self.process = subprocess.Popen(
            [slapd, "-d", "0", "-f", str(self.workdir / "slapd.conf"), "-h", " ".join(f"{url}/" for url in urls)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        deadline = started + STARTUP_TIMEOUT
        # ldapsearch verifies the ldaps certificate against the test CA (and the host).
        env = {**os.environ, "LDAPTLS_CACERT": str(self.ca_file), "LDAPTLS_REQCERT": "demand"}
        pending = list(urls)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.stop()
                raise RuntimeError(f"slapd did not answer on {pending[0]} within {STARTUP_TIMEOUT}s:\n{self.log}")
            probe = [ldapsearch, "-x", "-LLL", "-H", pending[0], "-D", SERVICE_DN, "-w", SERVICE_PASSWORD, "-b", BASE_DN, "-s", "base", "-o", "nettimeout=2", "dn"]
            result = subprocess.run(probe, capture_output=True, timeout=max(remaining, 1.0), env=env)
            if result.returncode == 0:
                pending.pop(0)
                if not pending:
                    break
                continue
            try:
                # The pause between probes doubles as the check that slapd did not exit.
                code = self.process.wait(timeout=min(0.05, remaining))
            except subprocess.TimeoutExpired:
                continue
            raise RuntimeError(f"slapd exited with {code} before answering:\n{self.log}")
        self.startup_seconds = time.monotonic() - started

    def stop(self) -> None:
        """Terminate slapd and wait (bounded) for it; kill it if it does not go."""
        process, self.process = self.process, None
        if process is not None:
            stop_process(process)

    @property
    def log(self) -> str:
        path = self.workdir / "slapd.log"
        return path.read_text(errors="replace") if path.exists() else ""


def start_slapd(workdir: Path, *, tls: bool = False) -> Slapd:
    """Configure, load and start a private slapd in ``workdir``; stop it with :meth:`Slapd.stop`.

    With ``tls=True`` it also serves :attr:`Slapd.ldaps_url`, with a server
    certificate for 127.0.0.1 and localhost signed by :attr:`Slapd.ca_file`.
    Skips (fails under CI=true) when slapd or ldap-utils is not installed.
    """
    require_tool("slapd", "slapd")
    slapadd = require_tool("slapadd", "slapd")
    require_tool("ldapsearch", "ldap-utils")
    started = time.monotonic()
    (workdir / "db").mkdir(parents=True, exist_ok=True)
    conf = workdir / "slapd.conf"
    if tls:
        make_server_certificate(workdir, make_ca(workdir, "ca"))
    conf.write_text(_slapd_conf(workdir, tls))
    ldif = workdir / "base.ldif"
    ldif.write_text(base_ldif())
    loaded = subprocess.run([slapadd, "-q", "-f", str(conf), "-l", str(ldif)], capture_output=True, text=True, timeout=30)
    if loaded.returncode != 0:
        raise RuntimeError(f"slapadd failed ({loaded.returncode}):\n{loaded.stdout}{loaded.stderr}")
    port = free_port()
    tls_port = None
    while tls and tls_port in (None, port):
        tls_port = free_port()
    server = Slapd(workdir, port, tls_port=tls_port)
    server.start()
    server.startup_seconds = time.monotonic() - started
    return server
