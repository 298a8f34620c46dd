"""
TLS to Redis (C{rediss://}, C{rediss+sentinel://}): certificates are always
verified, against the C{?ca=} file or else the system's authorities, and
this node presents C{?cert=}/C{?key=} when given.

The files are read again on every connection, so that renewed certificates
are picked up without a restart. Two forms of the same settings: Twisted's
for the connections (L{client_creator}) and the standard library's for the
blocking start-up check (L{ssl_context}).

Tests: tests/test_redis_tls.py.
"""

from __future__ import annotations

import ssl

from twisted.internet import ssl as twisted_ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator

from appserver._redis.location import TLSFiles

__all__ = ["client_creator", "ssl_context", "TLSFilesUnusable"]

_END = b"-----END CERTIFICATE-----"


class TLSFilesUnusable(ValueError):
    """
    A C{?ca=}, C{?cert=} or C{?key=} file cannot be read or is not PEM: the
    message names the file and what to do.
    """


def _read(path: str, name: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        raise TLSFilesUnusable(f"cannot read the Redis TLS ?{name}={path}: {error.strerror}") from None


def client_creator(files: TLSFiles, hostname: str) -> IOpenSSLClientConnectionCreator:
    """
    Twisted's client TLS settings for a connection to C{hostname} (a name
    or an IP address, which the certificate must name).

    @raise TLSFilesUnusable: a file is missing or not PEM.
    """
    trust_root = None
    if files.ca is not None:
        pem = _read(files.ca, "ca")
        blocks = [block + _END for block in pem.split(_END) if b"-----BEGIN CERTIFICATE-----" in block]
        try:
            trust_root = twisted_ssl.trustRootFromCertificates(
                [twisted_ssl.Certificate.loadPEM(block) for block in blocks])
        except Exception:
            blocks = []
        if not blocks:
            raise TLSFilesUnusable(f"the Redis TLS ?ca={files.ca} holds no PEM certificate")
    client_certificate = None
    if files.cert is not None and files.key is not None:
        pem = _read(files.cert, "cert") + b"\n" + _read(files.key, "key")
        try:
            client_certificate = twisted_ssl.PrivateCertificate.loadPEM(pem)
        except Exception as error:
            raise TLSFilesUnusable(f"the Redis TLS ?cert={files.cert} and ?key={files.key} are not a PEM "
                                   f"certificate and its key: {error}") from None
    return twisted_ssl.optionsForClientTLS(hostname, trustRoot=trust_root, clientCertificate=client_certificate)


def ssl_context(files: TLSFiles) -> ssl.SSLContext:
    """
    The standard library's settings for the same checks (for
    L{appserver._redis.startup}, which runs before the reactor).

    @raise TLSFilesUnusable: a file is missing or not PEM.
    """
    try:
        context = ssl.create_default_context(cafile=files.ca)
    except (OSError, ssl.SSLError) as error:
        raise TLSFilesUnusable(f"the Redis TLS ?ca={files.ca} cannot be used: {error}") from None
    if files.cert is not None:
        try:
            context.load_cert_chain(files.cert, files.key)
        except (OSError, ssl.SSLError) as error:
            raise TLSFilesUnusable(f"the Redis TLS ?cert={files.cert} and ?key={files.key} cannot be used: "
                                   f"{error}") from None
    return context
