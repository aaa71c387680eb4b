"""DICOM TLS (PS3.15 Annex B <https://dicom.nema.org/medical/dicom/current/output/html/part15.html#chapter_B>): the SSL contexts of the listener and of the associations we open.

The profile is the Non-downgrading BCP 195 TLS Profile (PS3.15 B.9 <https://dicom.nema.org/medical/dicom/current/output/html/part15.html#sect_B.9>; RFC 9325): TLS 1.2 or
1.3 only, TLS 1.2 limited to forward-secret AEAD suites (ECDHE/DHE with AES-GCM or
ChaCha20-Poly1305), no compression or renegotiation from the client side. dcmtk's tools use
the same profile by default (``+py``).

Authentication follows the ``[tls]`` settings: the listener presents ``certificate`` and,
when ``ca_certificates`` is set, requires each caller to present a certificate that chains to
it (the handshake fails otherwise, before any DICOM is read). As a client we present our
certificate when we have one and verify the peer against ``ca_certificates`` (or the system's
CAs), and its name against the host we call unless ``check_hostname`` is off.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from screener.config import TlsSettings
from screener.errors import ConfigError

#: TLS 1.2 suites of the BCP 195 profile (OpenSSL names); TLS 1.3 suites are all AEAD.
BCP195_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL"


def _base(purpose: ssl.Purpose) -> ssl.SSLContext:
    ctx = ssl.SSLContext(
        ssl.PROTOCOL_TLS_SERVER if purpose is ssl.Purpose.CLIENT_AUTH else ssl.PROTOCOL_TLS_CLIENT
    )
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(BCP195_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return ctx


def _file(key: str, value: str) -> str:
    if not value:
        raise ConfigError(f"{key} is not set: DICOM TLS needs it")
    if not Path(value).is_file():
        raise ConfigError(f"{key} = {value!r} is invalid: no such file")
    return value


def _load_chain(ctx: ssl.SSLContext, tls: TlsSettings) -> None:
    cert = _file("tls.certificate", tls.certificate)
    key = _file("tls.private_key", tls.private_key)
    try:
        ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"tls.certificate = {cert!r} / tls.private_key = {key!r}: cannot be used ({exc})"
        ) from None


def _load_cas(ctx: ssl.SSLContext, tls: TlsSettings) -> None:
    cas = _file("tls.ca_certificates", tls.ca_certificates)
    try:
        ctx.load_verify_locations(cafile=cas)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"tls.ca_certificates = {cas!r}: cannot be read ({exc})") from None


def server_context(tls: TlsSettings) -> ssl.SSLContext:
    """The listener's context: our certificate; callers' certificates required when a CA is set."""
    ctx = _base(ssl.Purpose.CLIENT_AUTH)
    _load_chain(ctx, tls)
    if tls.ca_certificates:
        _load_cas(ctx, tls)
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def client_context(tls: TlsSettings) -> ssl.SSLContext:
    """The context of associations we open (exports, rescans, echo): the peer is verified."""
    ctx = _base(ssl.Purpose.SERVER_AUTH)
    ctx.check_hostname = tls.check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    if tls.ca_certificates:
        _load_cas(ctx, tls)
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if tls.certificate or tls.private_key:
        _load_chain(ctx, tls)
    return ctx


def client_args(tls: TlsSettings, enabled: bool, host: str) -> tuple[ssl.SSLContext, str] | None:
    """pynetdicom's ``tls_args`` for ``AE.associate`` to ``host``, or None for plain TCP."""
    return (client_context(tls), host) if enabled else None
