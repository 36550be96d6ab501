"""Certificates made in the test: a private CA, server certificates for loopback addresses
(as IP subject alternative names), and the bad ones an attacker would present (another
host's, an expired one, a self-signed one that no CA vouches for).

EC P-256 keys: generated in about a millisecond each."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: the loopback addresses the test nodes bind (federation tests use .1 to .3)
LOOPBACK = ("127.0.0.1", "127.0.0.2", "127.0.0.3")


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Certs:
    #: the private CA's certificate (what ``federation.ca_file`` and ``--ca-file`` name)
    ca: Path
    #: signed by the CA, for the loopback addresses
    server: KeyPair
    #: signed by the CA, but for another host (IP 10.9.9.9 and elsewhere.invalid)
    wrong_host: KeyPair
    #: signed by the CA, for the loopback addresses, expired yesterday
    expired: KeyPair
    #: for the loopback addresses, signed by its own key: no CA vouches for it
    self_signed: KeyPair

    def client_context(self) -> ssl.SSLContext:
        """What a client trusting only the private CA verifies with."""
        return ssl.create_default_context(cafile=str(self.ca))


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)


def _leaf(
    directory: Path,
    name: str,
    *,
    issuer_name: x509.Name | None,
    issuer_key: ec.EllipticCurvePrivateKey | None,
    ips: tuple[str, ...],
    dns: tuple[str, ...] = (),
    days: tuple[int, int] = (-1, 30),
) -> KeyPair:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = _name(f"seamless-node test {name}")
    alt_names: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    alt_names += [x509.DNSName(d) for d in dns]
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name or subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + datetime.timedelta(days=days[0]))
        .not_valid_after(now + datetime.timedelta(days=days[1]))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    )
    if issuer_key is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    cert = builder.sign(issuer_key or key, hashes.SHA256())
    pair = KeyPair(directory / f"{name}.crt", directory / f"{name}.key")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(pair.key, key)
    return pair


def make_certs(directory: Path) -> Certs:
    """A CA and the certificates above, written as PEM files into *directory*."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("seamless-node test CA")
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca = directory / "ca.crt"
    ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    signed = {"issuer_name": ca_name, "issuer_key": ca_key}
    return Certs(
        ca=ca,
        server=_leaf(directory, "server", ips=LOOPBACK, **signed),
        wrong_host=_leaf(directory, "wrong-host", ips=("10.9.9.9",), dns=("elsewhere.invalid",), **signed),
        expired=_leaf(directory, "expired", ips=LOOPBACK, days=(-30, -1), **signed),
        self_signed=_leaf(directory, "self-signed", issuer_name=None, issuer_key=None, ips=LOOPBACK),
    )


def tls_settings(pair: KeyPair) -> dict[str, str]:
    """The ``node`` settings that make a test node serve HTTPS with *pair*."""
    return {"tls_cert_file": str(pair.cert), "tls_key_file": str(pair.key)}
