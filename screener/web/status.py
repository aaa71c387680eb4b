"""The status page (what ``screener status`` says, and the dead-lettered deliveries) and the
administrators' button that sends those SRs again."""

from __future__ import annotations

import structlog
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from screener.web.context import form_checked, page, state_of

log = structlog.get_logger(__name__)

#: A one-time message to the status page ("N dead-lettered deliveries will be sent again"): set by
#: the POST that resent them, read and deleted by the next status page, so a reload (or the
#: 30 s refresh) shows it no more.
FLASH_COOKIE = "screener_flash"


#: The channels as the status page names them (screener.report.destinations.CHANNELS).
CHANNEL_NAMES = {
    "dimse": "DICOM C-STORE",
    "stow": "DICOMweb STOW-RS",
    "hl7": "HL7 v2",
    "fhir": "FHIR",
}
#: What a delivery carries (exports.payload).
PAYLOAD_NAMES = {"result": "result", "assessment": "read (assessment SR)"}


async def status_page(request: Request, user: str) -> Response:
    from screener.report.ledger import list_exports
    from screener.views.status import build_report, counter_label, render_processes

    web = state_of(request)
    if "retried" in request.query_params:  # the message's old carrier: a refresh kept it
        keep = "?refresh=30" if request.query_params.get("refresh") == "30" else ""
        return RedirectResponse(f"/status{keep}", status_code=303)
    report = await run_in_threadpool(build_report, web.db, 10, web.settings)
    dead = await run_in_threadpool(lambda: list_exports(web.db, state="dead", limit=50))
    flash = request.cookies.get(FLASH_COOKIE)
    # digits only: anything else in the cookie was not set by retry_exports
    valid = flash and len(flash) <= 9 and all(c in "0123456789" for c in flash)
    response = page(
        request,
        "status.html",
        r=report,
        label=counter_label,
        processes=[line.strip() for line in render_processes(report.processes)],
        dead=dead,
        channel_names=CHANNEL_NAMES,
        payload_names=PAYLOAD_NAMES,
        retried=int(flash) if flash and valid else None,
    )
    if flash is not None:  # shown once: a reload or the 30 s refresh shows it no more
        response.delete_cookie(
            FLASH_COOKIE,
            path="/status",
            secure=web.proxies.https(request),
            httponly=True,
            samesite="strict",
        )
    return response


async def retry_exports(request: Request, user: str) -> Response:
    from screener.report.ledger import retry_dead

    web = state_of(request)
    await form_checked(request)

    def retried() -> int:
        count = retry_dead(web.db)
        web.audit(
            "web_exports_retried", user, f"{count} dead-lettered deliveries sent again by {user}"
        )
        return count

    count = await run_in_threadpool(retried)
    log.info("web_exports_retried", count=count, user=user)
    response = RedirectResponse("/status", status_code=303)
    response.set_cookie(  # the next status page says how many, once (FLASH_COOKIE)
        FLASH_COOKIE,
        str(count),
        max_age=60,
        path="/status",
        secure=web.proxies.https(request),
        httponly=True,
        samesite="strict",
    )
    return response
