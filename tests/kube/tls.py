"""The fake API server's TLS: a throwaway CA and a server certificate for 127.0.0.1.

Every real cluster serves TLS, and kubectl sends no bearer token over plain
HTTP, so the fake serves HTTPS with a certificate its kubeconfig trusts
(certificate-authority-data). The CA and the certificate are made once per test
process with the `openssl` command line (no Python dependency), in a temporary
directory removed at exit, and are valid for one day.
"""

from __future__ import annotations

import atexit
import shutil
import ssl
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

# P-256 keys: made in milliseconds, and both Go (kubectl) and Python's ssl take them.
_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
_SERVER_EXTENSIONS = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""


@dataclass(frozen=True)
class Credentials:
    ca_file: Path  # the CA certificate (PEM): what clients trust
    cert_file: Path  # the server certificate (PEM), signed by the CA
    key_file: Path  # the server's private key (PEM)

    @property
    def ca_pem(self) -> bytes:
        return self.ca_file.read_bytes()

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def client_context(self) -> ssl.SSLContext:
        """What a raw HTTP client needs to talk to the fake: its CA, hostname checked."""
        return ssl.create_default_context(cafile=str(self.ca_file))


_lock = threading.Lock()
_credentials: Credentials | None = None


def credentials() -> Credentials:
    """This process's CA and server certificate, made on first use."""
    global _credentials
    with _lock:
        if _credentials is None:
            directory = Path(tempfile.mkdtemp(prefix="fake-kube-tls-"))
            atexit.register(shutil.rmtree, directory, ignore_errors=True)
            _credentials = _make(directory)
        return _credentials


def _make(directory: Path) -> Credentials:
    ca_key, ca_file = directory / "ca.key", directory / "ca.crt"
    key_file, csr = directory / "server.key", directory / "server.csr"
    cert_file = directory / "server.crt"
    extensions = directory / "server.ext"
    extensions.write_text(_SERVER_EXTENSIONS)
    _openssl("req", "-x509", *_KEY, "-keyout", ca_key, "-out", ca_file, "-days", "1",
             "-subj", "/CN=fake-kube-ca",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    _openssl("req", "-new", *_KEY, "-keyout", key_file, "-out", csr,
             "-subj", "/CN=fake-kube-apiserver")
    _openssl("x509", "-req", "-in", csr, "-CA", ca_file, "-CAkey", ca_key,
             "-CAcreateserial", "-out", cert_file, "-days", "1", "-extfile", extensions)
    return Credentials(ca_file, cert_file, key_file)


def _openssl(*args: str | Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("the fake API server needs the openssl command line for its TLS")
    subprocess.run([openssl, *map(str, args)], check=True, capture_output=True, timeout=30)
