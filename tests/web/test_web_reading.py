"""A radiologist's session in Debian's headless chromium against a real `screener serve` with
two children's films and an adult's: a study found by accession and by the end of its UID,
its identity on the page, Enter never recording a read, a read in the reader's words counted
against the model in the stats, a read sent after the login ended saved once logged in again,
a restart that keeps the login, and a skipped adult listed with its reason and without an
overlay or a read form. axe-core checks every page; screenshots go to var/test-screenshots/."""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import create_engine, text
from support import (
    ServeProcess,
    assert_accessible,
    data_root,
    film_dicom,
    free_port,
    screenshots,
    serve_env,
    wait_for,
)

from screener.web.auth import hash_password

PASSWORD = "correct horse battery"
ADULT = "siim_chest_cr/1.2.276.0.7230010.3.1.4.8323329.1314.1517875167.222290.dcm"


def _sql(db_url: str, sql: str) -> Any:
    engine = create_engine(db_url)
    try:
        with engine.begin() as c:
            result = c.execute(text(sql))
            return result.scalar() if result.returns_rows else None
    finally:
        engine.dispose()


def _children() -> list[Path]:
    folder = data_root() / "chest_xray" / "train" / "NORMAL"
    if not folder.is_dir():
        pytest.skip(f"the chest X-ray training films are not at {folder} (set SCREENER_DATA)")
    return sorted(folder.glob("*.jpeg"))[:2]


def _path(browser: Any) -> str:
    return str(urllib.parse.urlparse(browser.current_url).path)


def _absent(browser: Any, by: str, value: str) -> bool:
    """True when no element matches (without the fixture's 60 s implicit wait)."""
    browser.implicitly_wait(0)
    try:
        return not browser.find_elements(by, value)
    finally:
        browser.implicitly_wait(60)


def _login(browser: Any) -> None:
    from selenium.webdriver.common.by import By

    browser.find_element(By.ID, "username").send_keys("alice")
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "login").click()


def test_a_radiologists_session(tmp_path: Path, dicom_dir: Path, browser: Any) -> None:
    """A radiologist finds a study, views its film, records a read with a note (Enter sends
    nothing) and keeps it through a login that ended mid-read."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    children = _children()
    adult = dicom_dir / ADULT
    db_url = f"sqlite:///{tmp_path / 'screener.db'}"
    web_port = free_port()
    env = serve_env(
        tmp_path,
        db_url,
        free_port(),
        screener_web_port=str(web_port),
        screener_web_users=json.dumps([f"alice:{hash_password(PASSWORD)}"]),
        # the bundle's own population: children are screened, the adult is skipped
        screener_population_max_age_years="-1",
    )
    serve = ServeProcess(tmp_path, env).start()
    incoming = tmp_path / "incoming"
    incoming.mkdir(exist_ok=True)
    for i, jpeg in enumerate(children):
        pixels = np.asarray(Image.open(jpeg).convert("L"))
        data = film_dicom(pixels, patient_age="004Y", accession=f"RD{i + 1}")
        (incoming / f"child{i}.dcm").write_bytes(data)
    (incoming / "adult.dcm").write_bytes(adult.read_bytes())
    wait_for(lambda: _sql(db_url, "select count(*) from results") >= 2, 180)
    wait_for(lambda: _sql(db_url, "select count(*) from jobs where state = 'skipped'") >= 1, 60)
    base = f"http://127.0.0.1:{web_port}"
    shots = screenshots()
    try:
        browser.get(f"{base}/worklist")
        _login(browser)
        wait_for(lambda: _path(browser) == "/worklist", 60)
        assert_accessible(browser, "worklist")

        # found by accession number, then by the end of its Study Instance UID
        browser.find_element(By.ID, "find").send_keys("RD1", Keys.ENTER)
        wait_for(lambda: _path(browser).startswith("/study/"), 60)
        uid = browser.find_element(By.ID, "study-uid").get_attribute("value")
        assert _sql(db_url, "select accession_number from studies where study_instance_uid = "
                    f"'{uid}'") == "RD1"  # fmt: skip
        browser.get(f"{base}/worklist")
        browser.find_element(By.ID, "find").send_keys(uid[-12:], Keys.ENTER)
        wait_for(lambda: _path(browser).startswith("/study/"), 60)
        assert browser.find_element(By.ID, "study-uid").get_attribute("value") == uid
        identity = browser.find_element(By.ID, "identity").text
        assert "RD1" in identity and "2026-11-28" in identity and "CR" in identity
        assert browser.find_element(By.ID, "top-image").is_displayed()
        # the film at its stored size (the page shows 768 px at most), and with a preset
        full = browser.find_element(By.CSS_SELECTOR, "a.full-size").get_attribute("href")
        study_url = browser.current_url
        stored = Image.open(children[0]).size  # (columns, rows) of the film sent
        for url in (full, full + "&window=contrast"):
            browser.get(url)
            size = browser.execute_script(
                "const i = document.images[0]; return [i.naturalWidth, i.naturalHeight]"
            )
            assert tuple(size) == stored, url
        browser.get(study_url)
        assert_accessible(browser, "study")
        browser.save_screenshot(str(shots / "20-study-read-form.png"))

        # Enter in the note, and Enter on a chosen finding, record nothing
        note = browser.find_element(By.ID, "note")
        note.send_keys("I see RLL consolidation - model missed it", Keys.ENTER)
        pneumonia = browser.find_element(By.ID, "finding-pneumonia")
        pneumonia.click()
        pneumonia.send_keys(Keys.ENTER)
        assert _path(browser).startswith("/study/")
        assert _sql(db_url, "select count(*) from reviews") == 0

        # the read in words, against the model's call: a disagreement counted in the stats
        flagged = "SECOND READ" in browser.find_element(By.ID, "read").text
        finding = "no_pneumonia" if flagged else "pneumonia"
        browser.find_element(By.ID, f"finding-{finding}").click()
        browser.find_element(By.ID, "record").click()
        recorded = browser.find_element(By.ID, "recorded").text
        assert "you disagree" in recorded
        # one read, carrying the note typed before the two Enters: neither sent the form
        assert _sql(db_url, "select count(*) from reviews where note like 'I see RLL%'") == 1
        assert _sql(db_url, "select count(*) from reviews") == 1
        assert _sql(db_url, "select verdict || ':' || finding || ':' || reader from reviews") == (
            f"disagree:{finding}:alice"
        )
        browser.save_screenshot(str(shots / "21-read-recorded.png"))
        next_link = browser.find_element(By.ID, "next-unread")
        next_link.click()
        wait_for(lambda: _path(browser).startswith("/study/"), 60)
        assert "RD2" in browser.find_element(By.ID, "identity").text
        browser.find_element(By.LINK_TEXT, "Stats").click()
        cell = "fp-1" if flagged else "fn-1"
        assert browser.find_element(By.ID, cell).text == "1"
        assert_accessible(browser, "stats")

        # the login ends mid-read: the read is kept through the login form and saved
        browser.get(f"{base}/worklist?q=RD2&status=all")
        browser.find_element(By.LINK_TEXT, "RD2").click()
        wait_for(lambda: _path(browser).startswith("/study/"), 60)
        _sql(db_url, "delete from web_sessions")  # as an expiry or an idle timeout would
        browser.find_element(By.ID, "note").send_keys("clear lungs")
        browser.find_element(By.ID, "finding-no_pneumonia").click()
        browser.find_element(By.ID, "record").click()
        assert "is saved" in browser.find_element(By.ID, "pending-read").text
        assert _sql(db_url, "select count(*) from reviews") == 1
        browser.save_screenshot(str(shots / "22-read-kept-through-login.png"))
        _login(browser)
        assert "is recorded" in browser.find_element(By.ID, "recorded").text
        assert _sql(db_url, "select count(*) from reviews where reader = 'alice' and "
                    "finding = 'no_pneumonia' and note = 'clear lungs'") == 1  # fmt: skip

        # a restart of serve keeps the login
        assert serve.terminate() == 0
        serve = ServeProcess(tmp_path, env).start()
        browser.get(f"{base}/worklist?status=reviewed")
        assert _path(browser) == "/worklist"
        reviewed = browser.find_element(By.ID, "worklist").text
        assert "alice" in reviewed and "no pneumonia (agrees)" in reviewed

        # the skipped adult: listed with its reason; no overlay and no read on its page
        browser.get(f"{base}/worklist?status=skipped")
        skipped = browser.find_element(By.ID, "skipped")
        assert "population" in skipped.text or "age" in skipped.text
        assert_accessible(browser, "skipped worklist")
        browser.save_screenshot(str(shots / "23-worklist-skipped.png"))
        skipped.find_element(By.CSS_SELECTOR, "a").click()
        wait_for(lambda: _path(browser).startswith("/study/"), 60)
        assert "NOT SCREENED" in browser.find_element(By.ID, "not-screened").text
        assert _absent(browser, By.CSS_SELECTOR, "img.overlay")
        assert _absent(browser, By.ID, "read-form")
        assert_accessible(browser, "skipped study")
        browser.save_screenshot(str(shots / "24-study-skipped.png"))

        # a filter that is not a probability says so instead of silently showing everything
        browser.get(f"{base}/worklist?min_prob=abc")
        assert "between 0 and 1" in browser.find_element(By.CSS_SELECTOR, "[role=alert]").text
    finally:
        serve.terminate()
