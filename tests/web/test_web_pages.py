"""The web's stats and upload pages, on `screener web` run alone against a database with
reads recorded, in Debian's headless chromium; every page at 200 % zoom (no sideways scrolling,
a 2,000-character word wrapped) and checked by axe-core; and what a hostile request gets: no
CSRF token, a body over web.max_upload_mb (declared or chunked), a PNG that declares billions
of pixels. Screenshots go to var/test-screenshots/."""

from __future__ import annotations

import http.client
import json
import os
import re
import struct
import subprocess
import sys
import urllib.parse
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import create_engine, text
from support import (
    ServeProcess,
    assert_accessible,
    build_dicom,
    data_root,
    film_dicom,
    free_port,
    kill_mid_call,
    multipart_form,
    record_result,
    screenshots,
    serve_env,
    wait_for,
)

from screener.db import OUTSIDE_DOMAIN, Database
from screener.db.migrate import upgrade
from screener.ingest.accept import Acceptor
from screener.ingest.spool import Spool
from screener.model.bundle import read_metadata
from screener.views.worklist import record_review
from screener.web.auth import hash_password

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery"
MAX_UPLOAD_MB = 2


def _seed_reads(db_url: str, settings: Any, model_bundle: Path) -> dict[str, Any]:
    """40 reviewed studies scored by the shipped bundle (24 read as pneumonia, 16 normal, P
    spread around the threshold as at a new site); returns the counts the page must show."""
    meta = read_metadata(model_bundle)
    threshold = float(meta["threshold"])
    db = Database(db_url)
    upgrade(db)
    acceptor = Acceptor(db, Spool(settings.storage.spool_dir, 0), settings)
    rng = np.random.default_rng(3)
    probs = list(np.clip(rng.beta(8, 1, 24), 0.01, 0.999)) + list(
        np.clip(rng.beta(1.5, 4, 16), 0.001, 0.99)
    )
    reads = [1] * 24 + [0] * 16
    for i, (p, read) in enumerate(zip(probs, reads, strict=True)):
        accepted = acceptor.accept(build_dicom(seed=i), source="dicom")
        record_result(
            db, accepted.sop_instance_uid, float(p), threshold,
            (meta["name"], meta["version"], meta["uid"]),
        )  # fmt: skip
        flagged = p >= threshold
        record_review(db, accepted.study_instance_uid, bool(read) == flagged, None, 12.0, "bob")
    db.dispose()
    flags = [p >= threshold for p in probs]
    tp = sum(f and r for f, r in zip(flags, reads, strict=True))
    tn = sum(not f and not r for f, r in zip(flags, reads, strict=True))
    return {"uid": meta["uid"], "sensitivity": tp / 24, "specificity": tn / 16, "reads": 40}


@pytest.fixture
def web(
    tmp_path: Path, sqlite_url: str, make_settings: Callable[..., Any], model_bundle: Path
) -> Iterator[tuple[str, ServeProcess, dict[str, Any]]]:
    """`screener web` alone on a database with reads; the bundle's own population (no
    widening), uploads limited to MAX_UPLOAD_MB."""
    expected = _seed_reads(sqlite_url, make_settings(sqlite_url), model_bundle)
    port = free_port()
    env = serve_env(
        tmp_path,
        sqlite_url,
        free_port(),
        screener_web_port=str(port),
        screener_web_users=json.dumps([f"alice:{hash_password(PASSWORD)}"]),
        screener_web_admins=json.dumps(["alice"]),  # she may queue uploads for PACS
        screener_web_max_upload_mb=str(MAX_UPLOAD_MB),
        screener_population_max_age_years="-1",
    )
    proc = ServeProcess(tmp_path, env, command="web").start()
    base = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return _get(base, "/login")[0] == 200
        except OSError:
            return False

    wait_for(answers, 30)
    try:
        yield base, proc, expected
    finally:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.terminate()


def _get(base: str, path: str, cookie: str = "") -> tuple[int, bytes]:
    parts = urllib.parse.urlparse(base)
    conn = http.client.HTTPConnection(parts.netloc, timeout=60)
    try:
        conn.request("GET", path, headers={"Cookie": cookie})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _post(
    base: str, body: Any, content_type: str, cookie: str, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    parts = urllib.parse.urlparse(base)
    conn = http.client.HTTPConnection(parts.netloc, timeout=120)
    try:
        conn.request(
            "POST",
            "/upload",
            body=body,
            headers={"Content-Type": content_type, "Cookie": cookie, **(headers or {})},
            encode_chunked=not isinstance(body, bytes),
        )
        response = conn.getresponse()
        return response.status, response.read()
    except (BrokenPipeError, ConnectionResetError):
        # the server may answer and close before the whole body is sent: read its answer
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` grey pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
        + chunk(b"IEND", b"")
    )


def _login(browser: Any, base: str) -> tuple[str, str]:
    """Log in as alice; returns the session cookie and the page's CSRF token."""
    from selenium.webdriver.common.by import By

    browser.get(f"{base}/login?next=/upload")
    browser.find_element(By.ID, "username").send_keys("alice")
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "login").click()
    wait_for(lambda: urllib.parse.urlparse(browser.current_url).path == "/upload", 60)
    cookie = "; ".join(f"{c['name']}={c['value']}" for c in browser.get_cookies())
    token = browser.find_element(By.NAME, "csrf").get_attribute("value")
    return cookie, str(token)


def _loaded(browser: Any, element: Any) -> bool:
    return bool(browser.execute_script("return arguments[0].naturalWidth", element) > 0)


@pytest.mark.timeout(300)  # 86 s on a loaded 2-core host
def test_stats_and_upload_in_the_browser(
    web: tuple[str, ServeProcess, dict[str, Any]], browser: Any, tmp_path: Path
) -> None:
    """The stats page shows the reads' figures, and uploads score a JPEG, queue a pediatric DICOM
    and refuse an adult's, as screener predict scores them."""
    from selenium.webdriver.common.by import By

    base, proc, expected = web
    shots = screenshots()
    train = data_root() / "chest_xray" / "train" / "PNEUMONIA"
    if not train.is_dir():
        pytest.skip(f"the chest X-ray training films are not at {train} (set SCREENER_DATA)")
    _login(browser, base)

    # stats: the counts of the reads, the ROC and the calibration plot as pictures
    browser.find_element(By.LINK_TEXT, "Stats").click()
    table = browser.find_element(By.ID, "stats").text
    assert f"{100 * expected['sensitivity']:.1f}%" in table
    assert f"{100 * expected['specificity']:.1f}%" in table
    assert " 40 " in f" {table} "
    roc = browser.find_element(By.CSS_SELECTOR, "img.roc")
    calibration = browser.find_element(By.CSS_SELECTOR, "img.calibration")
    wait_for(lambda: _loaded(browser, roc) and _loaded(browser, calibration), 60)
    browser.save_screenshot(str(shots / "7-stats.png"))
    assert_accessible(browser, "stats")

    # upload a training JPEG: scored at once, with its heatmap; the same P as `screener predict`
    film = sorted(train.glob("*.jpeg"))[0]
    browser.find_element(By.LINK_TEXT, "Upload").click()
    assert_accessible(browser, "upload")
    browser.find_element(By.ID, "film").send_keys(str(film))
    browser.find_element(By.ID, "score").click()
    shown = float(browser.find_element(By.CSS_SELECTOR, ".probability").text)
    overlay = browser.find_element(By.CSS_SELECTOR, "img.overlay")
    wait_for(lambda: _loaded(browser, overlay), 60)
    assert overlay.is_displayed()
    browser.save_screenshot(str(shots / "8-upload.png"))
    assert_accessible(browser, "upload with its result")

    # a pediatric DICOM film of the same pixels, queued like a received one
    pixels = np.asarray(Image.open(film).convert("L"))
    child = tmp_path / "child.dcm"
    child.write_bytes(film_dicom(pixels, patient_age="005Y", accession="WEB1"))
    browser.find_element(By.ID, "film").send_keys(str(child))
    browser.find_element(By.ID, "queue").click()
    browser.find_element(By.ID, "score").click()
    assert "Queued for screening" in browser.find_element(By.ID, "queued").text
    from_dicom = float(browser.find_element(By.CSS_SELECTOR, ".probability").text)
    engine = create_engine(proc.env["SCREENER_DATABASE_URL"])
    with engine.connect() as c:
        jobs = c.execute(
            text(
                "select j.state, i.source from jobs j join instances i on i.id = j.instance_id "
                "where i.source = 'web'"
            )
        ).all()
    engine.dispose()
    assert [tuple(j) for j in jobs] == [("queued", "web")]

    # an adult's film: outside the bundle's population, not assessed, nothing queued
    adult = tmp_path / "adult.dcm"
    adult.write_bytes(film_dicom(pixels, patient_age="045Y", accession="WEB2"))
    browser.find_element(By.ID, "film").send_keys(str(adult))
    browser.find_element(By.ID, "score").click()
    verdict = browser.find_element(By.ID, "verdict").text
    assert "NOT ASSESSED" in verdict and "population:age" in verdict
    assert not browser.find_elements(By.CSS_SELECTOR, ".probability")
    browser.save_screenshot(str(shots / "9-upload-adult.png"))

    predicted = json.loads(
        subprocess.run(
            [sys.executable, "-m", "screener.cli", "predict", "--json", str(film), str(child)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, **proc.env},
            cwd=proc.tmp_path,
            timeout=300,
        ).stdout
    )["results"]
    assert shown == pytest.approx(predicted[0]["probability"], abs=6e-4)
    assert from_dicom == pytest.approx(predicted[1]["probability"], abs=6e-4)


def test_hostile_uploads_are_refused_and_the_web_lives_on(
    web: tuple[str, ServeProcess, dict[str, Any]], browser: Any
) -> None:
    """No CSRF token: 403. Over web.max_upload_mb, by Content-Length or chunked: 413. PNGs
    declaring 64 million and 3.6 billion pixels: 422, image_too_large, never decoded. A page still loads
    after each; SIGTERM ends `screener web` and its model process."""
    base, proc, _ = web
    cookie, token = _login(browser, base)

    body, kind = multipart_form({}, _png_declaring(600, 600), "x.png")
    status, answer = _post(base, body, kind, cookie)
    assert status == 403 and b"CSRF" in answer

    too_big = os.urandom((MAX_UPLOAD_MB << 20) + 1024)
    body, kind = multipart_form({"csrf": token}, too_big, "big.dcm")
    assert _post(base, body, kind, cookie)[0] == 413

    def chunks() -> Iterator[bytes]:
        yield body[: 64 << 10]
        for start in range(64 << 10, len(body), 256 << 10):
            yield body[start : start + (256 << 10)]

    assert _post(base, chunks(), kind, cookie)[0] == 413

    # over the pixel budget (50 million): refused from the header, by screener's check or,
    # far over it, by the image library's own
    for side, said in ((8_000, b"8000 x 8000"), (60_000, b"decompression bomb")):
        body, kind = multipart_form({"csrf": token}, _png_declaring(side, side), "bomb.png")
        status, answer = _post(base, body, kind, cookie)
        assert status == 422, answer[:500]
        assert b"image_too_large" in answer and said in answer

    assert _get(base, "/upload", cookie)[0] == 200
    started = re.findall(r'"event": "web_model_process_started", "pid": (\d+)', proc.log())
    started = started or re.findall(r'"pid": (\d+)[^\n]*web_model_process_started', proc.log())
    assert started, proc.log()[-3000:]
    child = int(started[-1])
    assert _alive(child)
    assert proc.terminate() == 0
    wait_for(lambda: not _alive(child), 30)


def _alive(pid: int) -> bool:
    """The process runs (a zombie waiting for init to reap it has ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def test_the_model_process_dies_alone_and_is_started_again(
    tmp_path: Path, make_settings: Callable[..., Any]
) -> None:
    """The web's model process killed in the middle of a call (here: blocked reading a FIFO
    no one writes) answers that call `decoder_crashed`; the next call starts a new process,
    which refuses a PNG over the pixel budget from its header; stop() ends it."""

    from screener.web.modelwork import ModelWork, ModelWorkFailed

    work = ModelWork(make_settings(), timeout=120)
    first, failures = kill_mid_call(
        work, "overlay_png", tmp_path / "never-written", lambda: work.pid
    )
    assert [f.reason for f in failures] == ["decoder_crashed"]

    with pytest.raises(ModelWorkFailed) as refused:
        work.call("assess_upload", _png_declaring(8_000, 8_000))
    assert refused.value.reason == "image_too_large"
    second = work.pid
    assert second is not None and second != first and _alive(second)
    work.stop()
    assert not _alive(second)


#: 200 % zoom of a 1280 px wide window: the layout of a window 640 CSS px wide
ZOOMED = (640, 900)
#: one word longer than any line: a note pasted without spaces
LONG_WORD = ("consolidation" * 154)[:1996]  # with "see ", the longest note a read keeps

#: why the element ``arguments[0]`` is not wholly in view ("" when it is): beyond the window,
#: cut by an ancestor that clips or scrolls it, or broken into more than two lines
_CUT_JS = """
const el = arguments[0], r = el.getBoundingClientRect();
const view = document.documentElement.clientWidth;
if (r.left < 0 || r.right > view + 1)
  return `beyond the window: ${Math.round(r.left)}..${Math.round(r.right)} of ${view} px`;
for (let a = el.parentElement; a; a = a.parentElement) {
  if (getComputedStyle(a).overflowX === "visible") continue;
  const box = a.getBoundingClientRect();
  if (r.left < box.left - 1 || r.right > box.right + 1)
    return `cut by <${a.tagName.toLowerCase()} class="${a.className}">`;
}
const range = document.createRange();
range.selectNodeContents(el);
const lines = new Set([...range.getClientRects()].map(q => Math.round(q.top)));
return lines.size <= 2 ? "" : `broken into ${lines.size} lines`;
"""


def _no_sideways_scrolling(browser: Any, page: str) -> None:
    width, client = browser.execute_script(
        "const d = document.documentElement; return [d.scrollWidth, d.clientWidth]"
    )
    assert width <= client + 1, f"{page} scrolls sideways: {width} px wide in {client} px"


def test_pages_reflow_at_200_percent_zoom(
    web: tuple[str, ServeProcess, dict[str, Any]],
    browser: Any,
    sqlite_url: str,
    make_settings: Callable[..., Any],
    model_bundle: Path,
) -> None:
    """At 200 % zoom (a window 640 CSS px wide) the worklist, study, status and stats pages do
    not scroll sideways, SECOND READ is wholly in view, a read's note of one 2,000-character
    word wraps, the skip link is the first keyboard stop, and axe-core finds no serious or
    critical violation."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    base, _, _ = web
    meta = read_metadata(model_bundle)
    model, threshold = (meta["name"], meta["version"], meta["uid"]), float(meta["threshold"])
    settings = make_settings(sqlite_url)  # the fixture's: the same spool as `screener web`
    db = Database(sqlite_url)
    acceptor = Acceptor(db, Spool(settings.storage.spool_dir, 0), settings)
    studies = {}
    for seed, (accession, p, label) in enumerate(
        (("ZOOM1", 0.97, None), ("ZOOM2", 0.2, OUTSIDE_DOMAIN), ("ZOOM3", 0.95, None)), 100
    ):
        accepted = acceptor.accept(build_dicom(seed=seed), source="dicom")
        record_result(
            db, accepted.sop_instance_uid, p, threshold, model, label=label, accession=accession
        )
        studies[accession] = accepted.study_instance_uid
    record_review(db, studies["ZOOM3"], True, f"see {LONG_WORD}", 12.0, "bob")
    db.dispose()
    shots = screenshots()
    browser.set_window_size(*ZOOMED)
    assert browser.execute_script("return window.innerWidth") == ZOOMED[0]
    _login(browser, base)

    # the worklist: unread ZOOM1 flagged, ZOOM2 outside the domain; the skip link comes first
    browser.get(f"{base}/worklist")
    table = browser.find_element(By.ID, "worklist").text
    assert "ZOOM1" in table and "NOT ASSESSED" in table
    ActionChains(browser).send_keys(Keys.TAB).perform()
    skip = browser.switch_to.active_element
    assert skip.get_attribute("class") == "skip" and skip.is_displayed()
    assert browser.execute_script(_CUT_JS, skip) == ""
    browser.save_screenshot(str(shots / "10-worklist-200.png"))
    skip.send_keys(Keys.ENTER)
    assert browser.switch_to.active_element.tag_name == "main"

    # the study read with one long word: it wraps inside the page
    browser.get(f"{base}/study/ZOOM3")
    reads = browser.find_element(By.ID, "reviews")
    assert LONG_WORD in reads.text.replace("\n", "")
    assert reads.size["height"] > 20 * browser.find_element(By.ID, "probability").size["height"]
    browser.save_screenshot(str(shots / "11-study-200.png"))

    # every study, read or not: the worklist's columns fit the page, none scrolls out of view
    browser.get(f"{base}/worklist?status=all")
    wide, box = browser.execute_script(
        "const t = document.getElementById('worklist'); "
        "return [t.scrollWidth, t.parentElement.clientWidth]"
    )
    assert wide <= box + 1, f"the worklist is {wide} px wide in {box} px"

    for path, name in (("/worklist", "worklist"), ("/study/ZOOM3", "study")):
        browser.get(f"{base}{path}")
        flags = browser.find_elements(By.XPATH, "//main//*[normalize-space(text())='SECOND READ']")
        assert flags, f"no SECOND READ on the {name} page"
        for flag in flags:
            assert browser.execute_script(_CUT_JS, flag) == "", f"SECOND READ on the {name} page"
        _no_sideways_scrolling(browser, name)
        assert_accessible(browser, f"{name} at 200 %")

    browser.get(f"{base}/status")
    _no_sideways_scrolling(browser, "status")
    assert_accessible(browser, "status at 200 %")
    browser.save_screenshot(str(shots / "12-status-200.png"))

    browser.get(f"{base}/stats")
    roc = browser.find_element(By.CSS_SELECTOR, "img.roc")
    wait_for(lambda: _loaded(browser, roc), 60)
    _no_sideways_scrolling(browser, "stats")
    assert_accessible(browser, "stats at 200 %")
    browser.save_screenshot(str(shots / "13-stats-200.png"))

    browser.get(f"{base}/upload")
    _no_sideways_scrolling(browser, "upload")
    browser.save_screenshot(str(shots / "14-upload-200.png"))
