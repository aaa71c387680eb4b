"""The web's status and upload pages as a radiologist and an administrator read them, over real
sockets against `screener web` on a seeded SQLite database: every counter in words, each dead
letter with its study (a link to it, its accession number), the "sent again" message once, and
an upload's result naming its file with what happened in words."""

from __future__ import annotations

import html
import http.client
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import web.test_web_security as security
from sqlalchemy import create_engine, text
from support import build_dicom, multipart_form, record_result
from web.test_web_security import MODEL, Client

from screener.db import Database
from screener.ingest.accept import Acceptor
from screener.ingest.spool import Spool
from screener.report.ledger import STATES
from screener.views.status import COUNTER_LABELS

FLASH = "screener_flash"
web = security.web  # the security tests' fixture: `screener web` over a seeded database


def _rows(page: str, table_id: str) -> list[str]:
    """The body rows of the table ``table_id`` as HTML."""
    table = re.search(rf'<table id="{table_id}">(.*?)</table>', page, re.S)
    assert table is not None, f"no table {table_id}"
    return re.findall(r"<tr>(.*?)</tr>", table.group(1), re.S)[
        1 if table_id in ("dead", "destinations") else 0 :
    ]


def _add_dead_letter_without_accession(db_url: str, make_settings: Callable[..., Any]) -> None:
    """A second scored study, with no accession number, whose SR was dead-lettered too."""
    db = Database(db_url)
    accepted = Acceptor(
        db, Spool(make_settings(db_url).storage.spool_dir, 0), make_settings(db_url)
    )
    uid = accepted.accept(build_dicom(seed=8), source="dicom").sop_instance_uid
    record_result(db, uid, 0.2, 0.5, MODEL)
    with db.transaction() as s:
        s.execute(
            text(
                "update studies set accession_number = null where id = "
                "(select study_id from instances where sop_instance_uid = :uid)"
            ),
            {"uid": uid},
        )
        s.execute(
            text(
                "insert into exports (result_id, destination, state, attempts, last_error, "
                "created_at) select r.id, 'PACS@127.0.0.1:1', 'dead', 3, 'association refused', "
                "r.scored_at from results r join instances i on i.id = r.instance_id "
                "where i.sop_instance_uid = :uid"
            ),
            {"uid": uid},
        )
    db.dispose()


def _studies(db_url: str) -> dict[int, str | None]:
    """Each study's short id and accession number."""
    engine = create_engine(db_url)
    try:
        with engine.connect() as c:
            rows = c.execute(text("select id, accession_number from studies")).all()
            return {int(i): a for i, a in rows}
    finally:
        engine.dispose()


def test_status_counters_are_words_and_dead_letters_name_their_study(
    web: Callable[..., Any], sqlite_url: str, make_settings: Callable[..., Any]
) -> None:
    """Every counter row of the status page is labelled in words (no raw key such as
    duplicates_ignored), the processes are a list, not a <pre>, and each dead letter links to
    its study by short id, with the accession number where the study has one."""
    base, _, _ = web()
    _add_dead_letter_without_accession(sqlite_url, make_settings)
    bob = Client(base, "192.0.2.60")
    assert bob.login("bob") == 303
    status, _, page = bob.get("/status")
    assert status == 200
    words = html.unescape(page)
    assert "duplicates_ignored" not in words and "last_24h" not in words
    for section in ("counts", "received", "restarts"):  # always all present
        for label in COUNTER_LABELS[section].values():
            assert label in words, label
    for state in STATES:  # SR deliveries: pending, delivered, dead, each present
        assert COUNTER_LABELS["exports"][state] in words, state
    shown = {
        html.unescape(m) for m in re.findall(r'<th scope="row">([^<]*)</th>', page)
    }  # fmt: skip
    every_label = {label for labels in COUNTER_LABELS.values() for label in labels.values()}
    assert shown and shown <= every_label, shown - every_label
    assert "flagged for a second read" in shown and "not flagged" in shown  # 0.9 and 0.2
    assert '<pre id="processes"' not in page and 'id="processes"' in page

    studies = _studies(sqlite_url)
    assert sorted(studies.values(), key=str) == ["ACC7", None]
    rows = _rows(page, "dead")
    assert len(rows) == 2
    assert all("<td>result (DICOM C-STORE)</td>" in r for r in rows)  # what, over which channel
    (destination,) = _rows(page, "destinations")  # both dead letters went to one PACS
    assert "<td>DICOM C-STORE</td>" in destination
    assert destination.endswith('<td class="num">0</td><td class="num">2</td>')  # waiting, dead
    for short_id, accession in studies.items():
        (row,) = [r for r in rows if f'<a href="/study/%23{short_id}">#{short_id}</a>' in r]
        if accession:
            assert f'<a href="/study/%23{short_id}">{accession}</a>' in row
        else:
            assert "ACC7" not in row
        linked_status, _, study_page = bob.get(f"/study/%23{short_id}")
        assert linked_status == 200 and f"Study #{short_id}" in study_page


def test_the_resent_message_is_shown_once(
    web: Callable[..., Any], sqlite_url: str, make_settings: Callable[..., Any]
) -> None:
    """After an administrator sends the dead letters again, the next status page says how many
    (from a short-lived HttpOnly, SameSite=Strict cookie on /status that it deletes); a reload,
    ?retried= in the URL, or a forged cookie that is not digits shows nothing."""
    base, _, _ = web()
    _add_dead_letter_without_accession(sqlite_url, make_settings)
    alice = Client(base, "192.0.2.61")
    assert alice.login("alice") == 303
    alice.get("/status")
    status, headers, _ = alice.post("/exports/retry", {})
    assert status == 303 and headers["location"] == "/status"
    cookie = headers["set-cookie"].lower()
    assert cookie.startswith(f"{FLASH}=2;")
    for part in ("httponly", "samesite=strict", "path=/status", "max-age=60"):
        assert part in cookie, part
    assert alice.cookies[FLASH] == "2"

    _, headers, page = alice.get("/status")
    retried = re.search(r'<p class="ok" id="retried"[^>]*>([^<]*)</p>', page)
    assert (
        retried is not None and retried.group(1) == "2 dead-lettered deliveries will be sent again."
    )
    assert FLASH not in alice.cookies  # deleted by that page (Max-Age=0)
    assert "path=/status" in headers["set-cookie"].lower()

    for path in ("/status", "/status?refresh=30"):
        _, _, page = alice.get(path)
        assert 'id="retried"' not in page, path
    for path, to in (
        ("/status?retried=2", "/status"),
        ("/status?retried=2&refresh=30", "/status?refresh=30"),
    ):
        status, headers, _ = alice.get(path)  # an old ?retried= URL: cleaned, not believed
        assert status == 303 and headers["location"] == to, path

    for forged in ("<b>7", "7x", "1234567890", "-1", ""):
        alice.cookies[FLASH] = forged
        _, _, page = alice.get("/status")
        assert 'id="retried"' not in page and "&lt;b&gt;" not in page, forged
        assert FLASH not in alice.cookies, forged  # deleted all the same
    alice.cookies[FLASH] = "5"  # digits: this visitor's own page says so (no harm to anyone)
    _, _, page = alice.get("/status")
    assert "5 dead-lettered deliveries will be sent again." in page


def _upload(client: Client, data: bytes, filename: str, **fields: str) -> tuple[int, str]:
    """POST ``data`` as the upload form's file ``filename``, as ``client``'s browser would."""
    body, content_type = multipart_form({"csrf": client.csrf, **fields}, data, filename)
    conn = http.client.HTTPConnection(client.base.netloc, timeout=180)
    try:
        conn.request("POST", "/upload", body=body, headers={
            "Content-Type": content_type, "X-Forwarded-For": client.address,
            "Cookie": "; ".join(f"{k}={v}" for k, v in client.cookies.items())})  # fmt: skip
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        conn.close()


def _said(page: str, element_id: str) -> str:
    """The text of the element ``element_id`` (tags dropped, spaces folded, unescaped)."""
    found = re.search(rf'id="{element_id}"[^>]*>(.*?)</(?:p|h2)>', page, re.S)
    assert found is not None, f"no {element_id}"
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", found.group(1))).split())


def test_an_upload_names_its_file_and_says_in_words_what_happened(
    web: Callable[..., Any], sqlite_url: str
) -> None:
    """The upload page notes what takes time; its result names the browser's file (escaped, cut
    to 80 characters, unprintable characters as "?", never logged) and says in words that a broken DICOM
    was refused and that a resent one is already on file."""
    base, proc, _ = web()
    alice = Client(base, "192.0.2.62")
    assert alice.login("alice") == 303
    _, _, page = alice.get("/upload")
    note = re.search(r'<span class="note" id="upload-time">(.*?)</span>', page, re.S)
    assert note is not None and "first one after the web starts" in " ".join(note.group(1).split())
    assert 'aria-describedby="upload-time"' in page  # read out with the Score button

    name = "<b>DOE^JANE</b>\tchest " + "x" * 100 + ".dcm"
    status, page = _upload(alice, b"DICM" * 10, name, queue="1")
    assert status == 422, proc.log()[-4000:]  # not assessed: the model never saw it
    assert "<b>DOE^JANE" not in page
    shown = name.replace("\t", "?")[:79] + "…"  # 80 characters, the tab made visible
    assert _said(page, "upload-name") == "Result for " + shown
    assert _said(page, "queued").startswith("Refused, not queued (")
    assert "Queued: " not in page

    engine = create_engine(sqlite_url)
    with engine.connect() as c:  # the seeded study's image, sent again
        spooled = c.execute(text("select spool_path from instances")).scalar_one()
    engine.dispose()
    resent = Path(spooled).read_bytes()
    status, page = _upload(alice, resent, "again.dcm", queue="1")
    assert status == 200
    assert _said(page, "upload-name") == "Result for again.dcm"
    assert _said(page, "queued").startswith(
        "Already received: this SOP Instance UID is on file, so it is not queued again."
    )
    assert "DOE^JANE" not in proc.log() and "again.dcm" not in proc.log()
