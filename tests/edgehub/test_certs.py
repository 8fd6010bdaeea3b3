"""The stand-in's locally generated CA and server certificate."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography import x509

from edgehub.certs import CertError, ensure_certs, publish_ca_certificate

pytestmark = pytest.mark.fast


def sans(path: Path) -> tuple[set[str], set[str]]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}, set(san.get_values_for_type(x509.DNSName))


def test_certificates_are_generated_once_and_then_reused(tmp_path: Path) -> None:
    first = ensure_certs(tmp_path, ["127.0.5.10", "127.0.5.11"], ["localhost"])
    before = first.server_cert.read_bytes(), first.ca_cert.read_bytes()

    second = ensure_certs(tmp_path, ["127.0.5.11", "127.0.5.10"], ["LOCALHOST"])

    assert second == first
    assert (second.server_cert.read_bytes(), second.ca_cert.read_bytes()) == before
    assert sans(first.server_cert) == ({"127.0.5.10", "127.0.5.11"}, {"localhost"})
    assert first.server_key.stat().st_mode & 0o077 == 0  # private keys are private
    ca = x509.load_pem_x509_certificate(first.ca_cert.read_bytes())
    x509.load_pem_x509_certificate(first.server_cert.read_bytes()).verify_directly_issued_by(ca)


def test_a_changed_address_set_reissues_the_server_certificate_under_the_same_ca(tmp_path: Path) -> None:
    first = ensure_certs(tmp_path, ["127.0.5.10"], ["localhost"])
    ca_before = first.ca_cert.read_bytes()
    server_before = first.server_cert.read_bytes()

    ensure_certs(tmp_path, ["127.0.5.10", "127.0.5.12"], ["localhost"])

    assert first.ca_cert.read_bytes() == ca_before
    assert first.server_cert.read_bytes() != server_before
    assert sans(first.server_cert)[0] == {"127.0.5.10", "127.0.5.12"}


def test_a_corrupt_server_key_is_replaced(tmp_path: Path) -> None:
    paths = ensure_certs(tmp_path, ["127.0.5.10"])
    paths.server_key.write_text("garbage")

    ensure_certs(tmp_path, ["127.0.5.10"])

    assert paths.server_key.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    x509.load_pem_x509_certificate(paths.server_cert.read_bytes()).verify_directly_issued_by(ca)


def test_keys_and_their_folder_are_owner_only_even_when_an_older_run_left_them_wider(tmp_path: Path) -> None:
    first = ensure_certs(tmp_path, ["127.0.5.10"])
    first.ca_key.chmod(0o644)
    first.server_key.chmod(0o640)
    first.ca_key.parent.chmod(0o755)

    paths = ensure_certs(tmp_path, ["127.0.5.10"])

    assert stat.S_IMODE(paths.ca_key.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(paths.ca_key.stat().st_mode) == stat.S_IMODE(paths.server_key.stat().st_mode) == 0o600
    assert paths.ca_key.read_bytes() == first.ca_key.read_bytes()  # narrowed, not regenerated


def test_the_published_ca_certificate_is_world_readable_whatever_the_umask(tmp_path: Path) -> None:
    paths = ensure_certs(tmp_path / "state", ["127.0.5.10"])
    old = os.umask(0o077)
    try:
        published = publish_ca_certificate(paths.ca_cert, tmp_path / "public" / "edgehub")
    finally:
        os.umask(old)

    assert published.read_bytes() == paths.ca_cert.read_bytes()
    assert stat.S_IMODE(published.stat().st_mode) == 0o644
    assert stat.S_IMODE(published.parent.stat().st_mode) == 0o755
    assert os.listdir(published.parent) == ["ca.pem"]


def test_publishing_the_ca_certificate_into_a_file_says_which_folder_to_fix(tmp_path: Path) -> None:
    paths = ensure_certs(tmp_path / "state", ["127.0.5.10"])
    (tmp_path / "taken").write_text("a file, not a folder")

    with pytest.raises(CertError, match=r"cannot publish the CA certificate in .*taken"):
        publish_ca_certificate(paths.ca_cert, tmp_path / "taken")
