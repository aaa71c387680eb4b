"""The web worklist in a real browser: Debian's chromium, headless, driven by Selenium through
Debian's chromedriver (nothing downloaded). A film pushed by dcmtk's storescu to a real
`screener serve` appears on the worklist page after login; its study page shows the film and
the Grad-CAM overlay; a read is recorded with the user as reader; a POST without the CSRF
token is refused; the status page sends a dead-lettered SR again; a DICOM film queued from
the upload page is scored by the daemon's workers; a failed login keeps the name typed; axe-core
finds no serious or critical violation on any page. Screenshots of each page go to
var/test-screenshots/ (or $SCREENER_SCREENSHOTS) to look at."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
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
    dcmtk_tool,
    film_dicom,
    free_port,
    screenshots,
    serve_env,
    wait_for,
)

from screener.web.auth import hash_password, verify_password

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery"


def test_password_hashes_verify_and_differ() -> None:
    """scrypt hashes: the password verifies, another does not, a malformed hash matches nothing,
    and two hashes of one password differ (salted)."""
    a, b = hash_password(PASSWORD), hash_password(PASSWORD)
    assert a != b and a.startswith("scrypt$")
    assert verify_password(PASSWORD, a) and verify_password(PASSWORD, b)
    assert not verify_password("correct horse", a)
    assert not verify_password(PASSWORD, "scrypt$1$2$3$notbase64$x")
    assert not verify_password(PASSWORD, "plain")


def test_web_password_command_prints_a_users_entry() -> None:
    """web-password prints a users entry whose hash verifies the password given on stdin."""
    out = subprocess.run(
        [sys.executable, "-m", "screener.cli", "web-password", "alice", "--stdin"],
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env={**os.environ, "SCREENER_CONFIG": os.devnull},
    ).stdout.strip()
    name, _, stored = out.partition(":")
    assert name == "alice" and verify_password(PASSWORD, stored)


def _pediatric_film() -> Path:
    folder = data_root() / "chest_xray" / "train" / "NORMAL"
    if not folder.is_dir():
        pytest.skip(f"the chest X-ray training films are not at {folder} (set SCREENER_DATA)")
    return sorted(folder.glob("*.jpeg"))[0]


def _count(db_url: str, sql: str) -> int:
    engine = create_engine(db_url)
    try:
        with engine.connect() as c:
            return int(c.execute(text(sql)).scalar_one())
    finally:
        engine.dispose()


def test_a_pushed_film_is_read_in_the_browser(
    tmp_path: Path, dicom_dir: Path, browser: Any
) -> None:
    """A film pushed with storescu is logged into, listed, shown with its overlay and read in a
    real browser, every page accessible."""
    from selenium.webdriver.common.by import By

    storescu = dcmtk_tool("storescu")
    if storescu is None:
        pytest.skip("dcmtk's storescu is needed")
    # a SIIM film the domain guard passes (tests/model/test_golden.py), so it gets a score
    film = (
        dicom_dir / "siim_chest_cr" / "1.2.276.0.7230010.3.1.4.8323329.1314.1517875167.222290.dcm"
    )
    db_url = f"sqlite:///{tmp_path / 'screener.db'}"
    port, web_port = free_port(), free_port()
    users = json.dumps([f"alice:{hash_password(PASSWORD)}"])
    env = serve_env(
        tmp_path,
        db_url,
        port,
        screener_web_port=str(web_port),
        screener_web_users=users,
        screener_web_admins=json.dumps(["alice"]),  # resends dead letters, queues uploads
    )
    serve = ServeProcess(tmp_path, env).start()
    try:
        profile = REPO / "deploy" / "storescu-screener.cfg"  # as README says: JPEG as sent
        subprocess.run(
            [
                storescu,
                "-xf",
                str(profile),
                "Screener",
                "-aec",
                "SCREENER",
                "127.0.0.1",
                str(port),
                str(film),
            ],
            check=True,
            timeout=60,
        )
        wait_for(lambda: _count(db_url, "select count(*) from results") >= 1, 120)
        base = f"http://127.0.0.1:{web_port}"
        shots = screenshots()

        # a page without login goes to the login page, and back after it
        browser.get(f"{base}/worklist")
        assert urllib.parse.urlparse(browser.current_url).path == "/login"
        browser.find_element(By.ID, "username").send_keys("alice")
        browser.find_element(By.ID, "password").send_keys("wrong password")
        browser.find_element(By.ID, "login").click()
        assert "wrong password" in browser.find_element(By.ID, "login-error").text
        browser.save_screenshot(str(shots / "1-login.png"))
        assert_accessible(browser, "login after a failed one")
        # the name typed stays: only the password is typed again
        assert browser.find_element(By.ID, "username").get_attribute("value") == "alice"
        assert browser.find_element(By.ID, "password").get_attribute("value") == ""
        browser.find_element(By.ID, "password").send_keys(PASSWORD)
        browser.find_element(By.ID, "login").click()
        wait_for(lambda: urllib.parse.urlparse(browser.current_url).path == "/worklist", 60)

        # the film is on the worklist, with its score
        table = browser.find_element(By.ID, "worklist")
        assert "#1" in table.text and "CR" in table.text
        browser.save_screenshot(str(shots / "2-worklist.png"))
        assert_accessible(browser, "worklist")
        # it reloads itself every 30 s only once asked (WCAG 2.2.1), and says how to stop
        refresh = """const m = document.querySelector('meta[http-equiv="refresh"]');
        return m && m.content"""
        assert browser.execute_script(refresh) is None
        browser.find_element(By.ID, "refresh").click()
        wait_for(lambda: "refresh=30" in browser.current_url, 60)
        assert browser.execute_script(refresh) == "30"
        assert browser.find_element(By.ID, "refresh").text == "Stop refreshing every 30 s"
        browser.find_element(By.ID, "refresh").click()
        wait_for(lambda: "refresh" not in browser.current_url, 60)
        assert "#1" in browser.find_element(By.ID, "worklist").text

        # its study page shows the film, and the overlay when asked
        browser.find_element(By.LINK_TEXT, "#1").click()
        wait_for(lambda: urllib.parse.urlparse(browser.current_url).path.startswith("/study/"), 60)
        film_img = browser.find_element(By.CSS_SELECTOR, "img.film")
        wait_for(
            lambda: browser.execute_script("return arguments[0].naturalWidth", film_img) > 0, 60
        )
        probability = browser.find_element(By.ID, "probability").text
        assert 0.0 <= float(probability) <= 1.0
        browser.save_screenshot(str(shots / "3-study.png"))
        assert_accessible(browser, "study")
        browser.find_element(By.CSS_SELECTOR, "label[for=overlay-1]").click()
        overlay = browser.find_element(By.CSS_SELECTOR, "img.overlay")
        wait_for(
            lambda: browser.execute_script("return arguments[0].naturalWidth", overlay) > 0, 120
        )
        assert overlay.is_displayed() and not film_img.is_displayed()
        browser.save_screenshot(str(shots / "4-study-overlay.png"))

        # a read, recorded with the user as reader
        browser.find_element(By.NAME, "note").send_keys("consolidation right lower lobe")
        unflagged = "not flagged" in browser.find_element(By.ID, "read").text
        finding = "no_pneumonia" if unflagged else "pneumonia"  # agreeing with the model
        browser.find_element(By.ID, f"finding-{finding}").click()
        browser.find_element(By.ID, "record").click()
        assert "recorded" in browser.find_element(By.ID, "recorded").text
        assert "alice" in browser.find_element(By.ID, "reviews").text
        browser.save_screenshot(str(shots / "5-read-recorded.png"))
        assert (
            _count(
                db_url,
                "select count(*) from reviews where reader = 'alice' and verdict = 'agree' and note like 'consolidation%'",
            )
            == 1
        )

        # the same POST without the CSRF token, with the logged-in session: refused
        cookie = "; ".join(f"{c['name']}={c['value']}" for c in browser.get_cookies())
        request = urllib.request.Request(
            f"{base}/study/%231/review",
            data=urllib.parse.urlencode({"verdict": "disagree"}).encode(),
            headers={"Cookie": cookie},
            method="POST",
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 403
        assert _count(db_url, "select count(*) from reviews") == 1

        # the status page; a dead-lettered SR is sent again from it
        engine = create_engine(db_url)
        with engine.begin() as c:
            c.execute(
                text(
                    "insert into exports (result_id, destination, state, attempts, last_error, "
                    "created_at) select id, 'PACS@127.0.0.1:1', 'dead', 8, 'association refused', "
                    "scored_at from results limit 1"
                )
            )
        engine.dispose()
        browser.find_element(By.LINK_TEXT, "Status").click()
        assert "done" in browser.find_element(By.ID, "queue").text
        assert "association refused" in browser.find_element(By.ID, "dead").text
        # the Deliveries table (per destination) is on the page that axe-core checks
        deliveries = browser.find_element(By.ID, "destinations")
        assert "DICOM C-STORE" in deliveries.text and "PACS@127.0.0.1:1" in deliveries.text
        browser.execute_script("arguments[0].scrollIntoView()", deliveries)  # in the screenshot
        browser.save_screenshot(str(shots / "6-status.png"))
        assert_accessible(browser, "status")
        browser.find_element(By.ID, "retry").click()
        assert "1 dead-lettered" in browser.find_element(By.ID, "retried").text
        assert _count(db_url, "select count(*) from exports where state = 'pending'") == 1

        # a DICOM film dropped on the upload page and queued: the daemon's workers score it
        # like a received one, and it is on the worklist
        film_pixels = np.asarray(Image.open(_pediatric_film()).convert("L"))
        upload = tmp_path / "upload.dcm"
        upload.write_bytes(film_dicom(film_pixels, patient_age="004Y", accession="UPL1"))
        browser.find_element(By.LINK_TEXT, "Upload").click()
        assert_accessible(browser, "upload")
        browser.find_element(By.ID, "film").send_keys(str(upload))
        browser.find_element(By.ID, "queue").click()
        browser.find_element(By.ID, "score").click()
        assert "Queued for screening" in browser.find_element(By.ID, "queued").text
        assert (  # recorded against the administrator who queued it
            _count(
                db_url,
                "select count(*) from audit_events where event = 'web_upload_queued' "
                "and actor = 'alice'",
            )
            == 1
        )
        wait_for(lambda: _count(db_url, "select count(*) from results") >= 2, 120)
        browser.find_element(By.LINK_TEXT, "Worklist").click()
        assert "UPL1" in browser.find_element(By.ID, "worklist").text
    finally:
        serve.terminate()
