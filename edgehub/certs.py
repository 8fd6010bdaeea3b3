"""Local TLS material for the edgeHub stand-in: a private CA and one server certificate.

The Azure IoT SDK always connects with TLS and checks the server's name against
`GatewayHostName`, so the stand-in needs a certificate whose subject alternative names
cover every address the modules use. Everything is generated on first use into a state
directory (never committed) and reused until the SAN set changes or a certificate nears
expiry; the CA is kept across server-certificate renewals so module environments that
point at the CA file stay valid.

Private keys are 0600 in a 0700 folder. Modules need the CA certificate only:
`publish_ca_certificate` copies it alone into a folder others may read (a container volume
that modules mount), so no module ever sees a key.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import ipaddress
import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgefleet.errors import EdgefleetError
from edgefleet.filemodes import PRIVATE_FILE_MODE, PUBLIC_DIR_MODE, PUBLIC_FILE_MODE, private_dir, write_atomic

logger = logging.getLogger(__name__)

__all__ = ["CA_FILE_NAME", "CertError", "CertPaths", "ensure_certs", "publish_ca_certificate"]

CA_VALIDITY = dt.timedelta(days=3650)
SERVER_VALIDITY = dt.timedelta(days=365)
# Renew this long before expiry so a long-running stand-in never serves an expired certificate.
RENEW_BEFORE = dt.timedelta(days=30)
CA_NAME = "edgefleet local edgeHub CA"
SERVER_NAME = "edgefleet local edgeHub"
CA_FILE_NAME = "ca.pem"


class CertError(EdgefleetError):
    """Raise when the certificate directory cannot be used."""


@dataclass(frozen=True, slots=True)
class CertPaths:
    """Where the CA and the server certificate live (PEM files)."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


def ensure_certs(state_dir: Path, ips: Iterable[str], hostnames: Iterable[str] = ("localhost",)) -> CertPaths:
    """Create (or reuse) a CA and a server certificate valid for these IPs and host names."""
    wanted_ips = {ipaddress.ip_address(ip) for ip in ips}
    wanted_names = {name.lower() for name in hostnames}
    if not wanted_ips and not wanted_names:
        raise CertError("the server certificate needs at least one IP address or host name")
    cert_dir = Path(state_dir) / "certs"
    try:
        private_dir(cert_dir)
    except OSError as err:
        raise CertError(f"cannot create the certificate folder {cert_dir} ({err}): use a writable state dir") from err
    paths = CertPaths(
        ca_cert=cert_dir / CA_FILE_NAME,
        ca_key=cert_dir / "ca.key",
        server_cert=cert_dir / "server.pem",
        server_key=cert_dir / "server.key",
    )
    # Test runs and a CLI may share a state dir: serialise generation so no one reads half a key.
    with _locked(cert_dir / ".lock"):
        now = dt.datetime.now(dt.UTC)
        ca_key, ca_cert, ca_new = _ensure_ca(paths, now)
        if ca_new or not _server_usable(paths, ca_cert, wanted_ips, wanted_names, now):
            _write_server(paths, ca_key, ca_cert, wanted_ips, wanted_names, now)
            logger.info(
                "Generated server certificate for %s in %s",
                ", ".join(sorted(map(str, wanted_ips)) + sorted(wanted_names)),
                cert_dir,
            )
        for key in (paths.ca_key, paths.server_key):  # keys an older version wrote with a wider mode
            if key.stat().st_mode & 0o777 != PRIVATE_FILE_MODE:
                key.chmod(PRIVATE_FILE_MODE)
    return paths


def publish_ca_certificate(ca_cert: Path, export_dir: Path) -> Path:
    """Copy the CA certificate (public, 0644) alone into `export_dir` (0755 when created here); return its path."""
    export_dir = Path(export_dir)
    try:
        if not export_dir.is_dir():
            export_dir.mkdir(mode=PUBLIC_DIR_MODE, parents=True)
            export_dir.chmod(PUBLIC_DIR_MODE)  # modules running as other users must reach the file
        target = export_dir / CA_FILE_NAME
        write_atomic(target, Path(ca_cert).read_bytes(), PUBLIC_FILE_MODE)
    except OSError as err:
        raise CertError(f"cannot publish the CA certificate in {export_dir} ({err}): choose a writable folder") from err
    return target


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on `path` for the duration of the block."""
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _ensure_ca(paths: CertPaths, now: dt.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, bool]:
    """Return the CA key and certificate, generating them when missing, unreadable or expiring."""
    try:
        key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
        if isinstance(key, ec.EllipticCurvePrivateKey) and cert.not_valid_after_utc - RENEW_BEFORE > now:
            return key, cert, False
    except (OSError, ValueError):
        pass  # missing or corrupt: regenerate below
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))  # tolerate small clock skew between processes
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(paths.ca_key, _key_pem(key))
    _write_public(paths.ca_cert, cert.public_bytes(serialization.Encoding.PEM))
    logger.info("Generated a local CA in %s", paths.ca_cert.parent)
    return key, cert, True


def _server_usable(
    paths: CertPaths,
    ca_cert: x509.Certificate,
    ips: set[ipaddress.IPv4Address | ipaddress.IPv6Address],
    names: set[str],
    now: dt.datetime,
) -> bool:
    """Return whether the existing server certificate matches the CA, the SAN set and the clock."""
    try:
        cert = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
        key = serialization.load_pem_private_key(paths.server_key.read_bytes(), password=None)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return False
    if cert.issuer != ca_cert.subject or cert.not_valid_after_utc - RENEW_BEFORE <= now:
        return False
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):  # issued by an older CA, or tampered with
        return False
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if public != cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        return False
    have_ips = set(san.get_values_for_type(x509.IPAddress))
    have_names = {name.lower() for name in san.get_values_for_type(x509.DNSName)}
    return have_ips == ips and have_names == names


def _write_server(
    paths: CertPaths,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    ips: set[ipaddress.IPv4Address | ipaddress.IPv6Address],
    names: set[str],
    now: dt.datetime,
) -> None:
    """Issue a new server key and certificate for exactly these SANs."""
    key = ec.generate_private_key(ec.SECP256R1())
    alt_names: list[x509.GeneralName] = [x509.DNSName(name) for name in sorted(names)]
    alt_names += [x509.IPAddress(ip) for ip in sorted(ips, key=str)]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVER_NAME)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + SERVER_VALIDITY, ca_cert.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        # Strict verifiers (Python 3.13's default VERIFY_X509_STRICT) require the authority key id.
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(paths.server_key, _key_pem(key))
    _write_public(paths.server_cert, cert.public_bytes(serialization.Encoding.PEM))


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """Serialise a private key as unencrypted PKCS#8 PEM (Mosquitto cannot prompt for a passphrase)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write_private(path: Path, data: bytes) -> None:
    """Write a key readable only by its owner (0600), atomically."""
    write_atomic(path, data)


def _write_public(path: Path, data: bytes) -> None:
    """Write a certificate (0644) atomically, so a starting broker never reads half a file."""
    write_atomic(path, data, PUBLIC_FILE_MODE)
