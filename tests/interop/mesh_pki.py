"""Writes a mesh CA and SPIFFE workload certificates as PEM files, for the mTLS interop checks.

    mesh_pki.py DIR NAME=spiffe://td/ns/NS/sa/SA ... [--ca NAME]

writes DIR/NAME-ca.pem (the root, once per --ca name, default "mesh") and, for each
NAME=URI, DIR/NAME.pem and DIR/NAME-key.pem (a P-256 leaf whose only SAN is the URI, for
client and server use). A second call with another --ca makes certificates no mesh proxy trusts.
"""
import datetime
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def pem_key(key):
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def main():
    args = sys.argv[1:]
    ca_name = "mesh"
    if "--ca" in args:
        i = args.index("--ca")
        ca_name = args[i + 1]
        del args[i : i + 2]
    out = Path(args[0])
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{ca_name} root")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_subject)
        .issuer_name(ca_subject)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    (out / f"{ca_name}-ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for spec in args[1:]:
        name, uri = spec.split("=", 1)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(ca_subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=True
            )
            .add_extension(
                x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        (out / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (out / f"{name}-key.pem").write_bytes(pem_key(key))


if __name__ == "__main__":
    main()
