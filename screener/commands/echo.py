"""``screener echo HOST PORT``: C-ECHO a peer (PS3.7 9.1.5 <https://dicom.nema.org/medical/dicom/current/output/html/part07.html#sect_9.1.5>) and print the status."""

from __future__ import annotations

import argparse
from typing import Any

from screener.config import Settings


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("echo", help="C-ECHO a DICOM peer")
    p.add_argument("host", help="the peer's host name or IP address")
    p.add_argument("port", type=int, help="the peer's DICOM port (e.g. 104, 11112, 2762 for TLS)")
    p.add_argument("--aet", default=None, help="called AE title (default: ANY-SCP)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds")
    p.add_argument(
        "--tls", action="store_true", help="over DICOM TLS, with the [tls] section's certificates"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from pynetdicom import AE

    from screener.dicomnet.tls import client_context
    from screener.errors import ScreenerError
    from screener.ingest.sopclasses import VERIFICATION

    ae = AE(ae_title=settings.listener.ae_title)
    ae.add_requested_context(VERIFICATION)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = args.timeout
    ae.connection_timeout = args.timeout
    tls_args = (client_context(settings.tls), args.host) if args.tls else None
    try:
        assoc = ae.associate(
            args.host, args.port, ae_title=args.aet or "ANY-SCP", tls_args=tls_args
        )
    except OSError as exc:  # an unresolvable host name (socket.gaierror) and the like
        raise ScreenerError(
            f"C-ECHO {args.host}:{args.port}: cannot connect ({exc.strerror or exc})"
        ) from None
    if not assoc.is_established:
        print(
            f"C-ECHO {args.host}:{args.port}: association failed (rejected, aborted or no answer)"
        )
        return 1
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    if status and status.Status == 0x0000:
        print(f"C-ECHO {args.host}:{args.port}: success")
        return 0
    code = f"0x{status.Status:04X}" if status else "no response"
    print(f"C-ECHO {args.host}:{args.port}: failed ({code})")
    return 1
