"""Silent start (shadow mode) and going live: the mode rule on SQLite and PostgreSQL, the
exporter following the database without a restart, and the whole path through real
processes -- `screener serve` in shadow with a dcmtk storescp as PACS, films pushed with
storescu, nothing at the PACS; `screener site go-live`; the next film's SR at the PACS and
the shadow-time results still unsent -- with `status`, `worklist` and the web saying which."""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from sqlalchemy import func, select, update
from support import (
    Storescp,
    build_dicom,
    dcmtk_tool,
    export_states,
    free_port,
    run_screener,
    serve_env,
    sr_deliveries,
    storescu,
    wait_for,
)

from screener.config import Settings
from screener.db import Database, Export, Job, Result, utcnow
from screener.db.migrate import upgrade
from screener.errors import ModelError
from screener.ingest.accept import Acceptor
from screener.ingest.spool import Spool
from screener.model.bundle import read_metadata
from screener.report.export import Exporter
from screener.serve.workers import _export_planner
from screener.site.mode import (
    GO_LIVE,
    LIVE,
    SHADOW,
    SILENT_START,
    SiteError,
    SiteEventRecord,
    decide,
    record,
    send_shadow,
    site_mode,
)

STORESCP = dcmtk_tool("storescp")


def _event(kind: str, bundle_uid: str) -> SiteEventRecord:
    return SiteEventRecord(
        id=1,
        at=datetime(2026, 12, 6, 1, 0, tzinfo=UTC),
        event=kind,
        operator="dr-a",
        note=None,
        bundle_uid=bundle_uid,
        bundle_name="screener-default",
        bundle_version="1",
        threshold=0.56,
        target_sensitivity=0.95,
    )


@pytest.mark.parametrize(
    ("configured", "latest", "expected"),
    [
        ("shadow", None, SHADOW),
        ("shadow", (GO_LIVE, "1.2.3"), LIVE),
        ("shadow", (GO_LIVE, "1.2.99"), SHADOW),  # another bundle went live: this one is new
        ("shadow", (SHADOW, "1.2.3"), SHADOW),
        ("live", None, LIVE),
        ("live", (GO_LIVE, "1.2.99"), LIVE),
        ("live", (SHADOW, "1.2.99"), SHADOW),  # `screener site shadow` silences any bundle
    ],
)
def test_the_mode_rule(configured: str, latest: tuple[str, str] | None, expected: str) -> None:
    """Shadow in the file is live only after a go-live of the loaded bundle (1.2.3) that is the
    latest event; live in the file is live unless the latest event is a return to shadow."""
    event = _event(*latest) if latest else None
    mode = decide(configured, event, "1.2.3")
    assert mode.mode == expected
    assert mode.line.startswith(SILENT_START if expected == SHADOW else "LIVE")


def test_go_live_and_back_are_recorded_per_bundle(
    db_url: str, make_settings: Callable[..., Settings], model_bundle: Path, tmp_path: Path
) -> None:
    """go-live records who, when, the bundle's UID, name, version and operating point, and makes
    that bundle live; another bundle configured afterwards starts silent; shadow silences it."""
    settings = make_settings(db_url, **{"site.mode": "shadow"})
    db = Database(db_url)
    upgrade(db)
    try:
        meta = read_metadata(model_bundle)
        assert not site_mode(db, settings).live
        with pytest.raises(SiteError, match="operator"):
            record(db, settings, GO_LIVE, "  ")
        before = datetime.now(UTC)
        went = record(db, settings, GO_LIVE, "dr-a", "trial reviewed")
        assert (went.operator, went.note, went.bundle_uid) == (
            "dr-a",
            "trial reviewed",
            meta["uid"],
        )
        assert (went.bundle_name, went.bundle_version) == (meta["name"], meta["version"])
        assert went.threshold == pytest.approx(meta["threshold"])
        assert went.target_sensitivity == pytest.approx(meta["target_sensitivity"])
        assert before <= went.at <= datetime.now(UTC)
        mode = site_mode(db, settings)
        assert mode.live and mode.since == went.at and "dr-a" in mode.line
        # a site bundle (a copy with its own UID) starts silent until it goes live itself
        other = tmp_path / "site-bundle"
        other.mkdir()
        for f in model_bundle.iterdir():
            if f.is_file():
                (other / f.name).symlink_to(f)
        (other / "model.json").unlink()
        (other / "model.json").write_text(json.dumps({**meta, "uid": "1.2.826.0.1.9.9"}))
        moved = make_settings(db_url, **{"site.mode": "shadow", "model.bundle": str(other)})
        assert not site_mode(db, moved).live
        assert site_mode(db, settings).live
        record(db, settings, SHADOW, "ops")
        assert not site_mode(db, settings).live
        live_file = make_settings(db_url, **{"site.mode": "live"})
        assert not site_mode(db, live_file).live  # an explicit shadow beats the file's live
    finally:
        db.dispose()


def test_an_unreadable_bundle_keeps_a_shadow_site_silent(
    sqlite_url: str, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """With model.bundle missing or not a folder, a shadow site stays silent even after a
    go-live of another bundle, and going live is refused naming the bundle."""
    db = Database(sqlite_url)
    upgrade(db)
    try:
        record(db, make_settings(sqlite_url), GO_LIVE, "dr-a")
        not_a_folder = tmp_path / "model.json"
        not_a_folder.write_text("{}")
        for bundle in (tmp_path / "missing", not_a_folder):
            settings = make_settings(
                sqlite_url, **{"site.mode": "shadow", "model.bundle": str(bundle)}
            )
            mode = site_mode(db, settings)
            assert not mode.live and mode.bundle_uid is None
            with pytest.raises(ModelError, match="model"):
                record(db, settings, GO_LIVE, "dr-a")
    finally:
        db.dispose()


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[Storescp]:
    if STORESCP is None:
        pytest.skip("dcmtk's storescp is not installed")
    scp = Storescp(tmp_path / "pacs")
    yield scp
    scp.stop()


def _states(db: Database) -> dict[str, int]:
    with db.transaction() as session:
        rows = session.execute(select(Export.state, func.count()).group_by(Export.state))
        return {str(s): int(n) for s, n in rows}


def test_results_scored_in_shadow_are_held_and_sent_only_on_request(
    db_url: str, make_settings: Callable[..., Settings], pacs: Storescp
) -> None:
    """The worker's planner makes shadow rows while silent; the exporter sends nothing in
    shadow (not even a pending row) and, once live, only what was scored live;
    `send-shadow` sets the held ones pending deliberately."""
    settings = make_settings(
        db_url, **{"site.mode": "shadow", "export.destinations": [pacs.destination]}
    )
    db = Database(db_url)
    upgrade(db)
    acceptor = Acceptor(db, Spool(settings.storage.spool_dir, 0), settings)
    exporter = Exporter(db, settings)
    assert exporter.bundle_uid is not None
    planner = _export_planner(settings)
    assert planner is not None

    def score(seed: int) -> None:
        """One accepted image scored by the loaded bundle, its exports planned by the worker's hook."""
        accepted = acceptor.accept(build_dicom(seed=seed), source="dicom")
        with db.transaction() as session:
            job = session.get(Job, accepted.job_id)
            assert job is not None and job.instance_id is not None
            now = utcnow()
            result = Result(
                job_id=job.id,
                instance_id=job.instance_id,
                frame_number=1,
                probability=0.9,
                label="pneumonia",
                threshold=0.56,
                model_name="screener-default",
                model_version="1",
                model_uid=exporter.bundle_uid,
                queued_at=now,
                started_at=now,
                scored_at=now,
            )
            session.add(result)
            session.flush()
            planner(session, result)

    try:
        score(1)
        assert _states(db) == {"shadow": 1}
        assert exporter.deliver_due() == 0 and pacs.files() == []
        # a pending row while silent (planned by hand, or before `site shadow`) waits too
        with db.transaction() as session:
            session.execute(update(Export).values(state="pending", next_attempt_at=utcnow()))
        assert exporter.deliver_due() == 0 and pacs.files() == []
        with db.transaction() as session:
            session.execute(update(Export).values(state="shadow", next_attempt_at=None))
        record(db, settings, GO_LIVE, "dr-a")
        score(2)
        assert _states(db) == {"shadow": 1, "pending": 1}
        assert exporter.deliver_due() == 1
        assert _states(db) == {"shadow": 1, "delivered": 1} and len(pacs.files()) == 1
        assert send_shadow(db, "ops") == 1
        assert exporter.deliver_due() == 1 and _states(db) == {"delivered": 2}
        assert len(pacs.files()) == 2
    finally:
        db.dispose()


# -- through real processes ---------------------------------------------------------------


def _screener(env: dict[str, str], cwd: Path, *args: str) -> str:
    out = run_screener(env, cwd, *args)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _page(port: int, path: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers={"X-Remote-User": "alice"})
        response = conn.getresponse()
        body = response.read().decode()
        assert response.status == 200, (path, response.status, body[:500])
        return body
    finally:
        conn.close()


def test_serve_in_shadow_sends_nothing_until_go_live(
    tmp_path: Path,
    sqlite_url: str,
    serve_process: Callable[..., Any],
    dicom_dir: Path,
    pacs: Storescp,
) -> None:
    """`serve` in shadow scores three films and sends nothing to the storescp; status, worklist,
    the start-up log and the web say so; after `screener site go-live` (no restart) the next
    film's SR arrives, status and the stats page name who, when and the bundle, and the three
    shadow-time results stay unsent."""
    web_port = free_port()
    env = serve_env(
        tmp_path,
        sqlite_url,
        free_port(),
        screener_site_mode="shadow",
        screener_export_destinations=pacs.destination,
        screener_export_poll_seconds="0.2",
        screener_web_port=str(web_port),
        screener_web_trusted_user_header="X-Remote-User",
    )
    daemon = serve_process(env).start()
    films = sorted((dicom_dir / "siim_chest_cr").glob("*.dcm"))[:4]
    storescu(int(env["SCREENER_LISTENER_PORT"]), films[:3])
    # every film scored, its export recorded as shadow; the exporter has polled since
    wait_for(lambda: export_states(sqlite_url) == {"shadow": 3}, timeout=180, interval=0.2)
    wait_for(lambda: '"exporter_site_mode"' in daemon.log(), timeout=30)
    first_poll = daemon.log().count('"event": "exporter_site_mode"')
    assert first_poll == 1 and '"mode": "shadow"' in daemon.log()
    assert '"event": "site_mode"' in daemon.log()
    assert pacs.files() == []
    status = json.loads(_screener(env, tmp_path, "status", "--json"))
    assert status["site"]["mode"] == "shadow" and status["exports"] == {
        "pending": 0,
        "delivered": 0,
        "dead": 0,
        "shadow": 3,
    }
    assert "site: SILENT START" in _screener(env, tmp_path, "status")
    listed = run_screener(env, tmp_path, "worklist", "--format", "csv")
    assert listed.returncode == 0 and listed.stderr.startswith(SILENT_START)
    assert len(listed.stdout.splitlines()) == 4  # the header and three studies, nothing else
    assert SILENT_START in _page(web_port, "/worklist")
    assert "No go-live recorded" in _page(web_port, "/stats")

    said = _screener(env, tmp_path, "site", "go-live", "--operator", "dr-a", "--note", "trial ok")
    assert "go_live" in said and "no restart" in said
    site = json.loads(_screener(env, tmp_path, "status", "--json"))["site"]
    uid = read_metadata(env["SCREENER_MODEL_BUNDLE"])["uid"]
    assert site["mode"] == "live" and site["event"]["operator"] == "dr-a"
    assert site["event"]["bundle_uid"] == uid and site["since"] is not None
    wait_for(lambda: SILENT_START not in _page(web_port, "/worklist"), timeout=30)
    stats = _page(web_port, "/stats")
    assert "by dr-a" in stats and uid in stats and "threshold 0.56" in stats

    storescu(int(env["SCREENER_LISTENER_PORT"]), films[3:])
    wait_for(lambda: len(pacs.files()) >= 1, timeout=180, interval=0.2)
    wait_for(
        lambda: export_states(sqlite_url) == {"shadow": 3, "delivered": 1},
        timeout=60,
        interval=0.2,
    )
    per_sr, per_source = sr_deliveries(pacs.files())
    assert list(per_sr.values()) == [1]
    assert list(per_source) == [str(dcmread(films[3], stop_before_pixels=True).SOPInstanceUID)]
    assert export_states(sqlite_url) == {"shadow": 3, "delivered": 1}
    assert daemon.terminate() == 0


def test_every_web_page_says_silent_start_and_stays_accessible(
    tmp_path: Path, sqlite_url: str, browser: Any, make_settings: Callable[..., Settings]
) -> None:
    """`screener web` on a site in shadow shows the SILENT START line at the top of the login,
    worklist, upload, stats and status pages, with no serious or critical axe-core violation;
    after a go-live (no restart) the line is gone and the stats page names the go-live."""
    from selenium.webdriver.common.by import By
    from support import ServeProcess, assert_accessible, screenshots

    from screener.web.auth import hash_password

    password = "correct horse battery"
    db = Database(sqlite_url)
    upgrade(db)
    port = free_port()
    env = serve_env(
        tmp_path,
        sqlite_url,
        free_port(),
        screener_site_mode="shadow",
        screener_web_port=str(port),
        screener_web_users=json.dumps([f"alice:{hash_password(password)}"]),
    )
    web = ServeProcess(tmp_path, env, command="web").start()
    base = f"http://127.0.0.1:{port}"
    try:
        browser.get(f"{base}/login")
        banner = browser.find_element(By.ID, "site-mode")
        assert banner.text.startswith(SILENT_START)
        assert_accessible(browser, "/login in shadow")
        browser.find_element(By.ID, "username").send_keys("alice")
        browser.find_element(By.ID, "password").send_keys(password)
        browser.find_element(By.ID, "login").click()
        wait_for(lambda: "/login" not in browser.current_url, 60)
        for path in ("/worklist", "/upload", "/stats", "/status"):
            browser.get(base + path)
            assert browser.find_element(By.ID, "site-mode").text.startswith(SILENT_START), path
            assert_accessible(browser, f"{path} in shadow")
        browser.save_screenshot(str(screenshots() / "shadow-status.png"))
        record(db, make_settings(sqlite_url, **{"site.mode": "shadow"}), GO_LIVE, "dr-a")

        def banner_gone() -> bool:
            browser.get(f"{base}/stats")
            return not browser.find_elements(By.ID, "site-mode")

        browser.implicitly_wait(0)  # find_elements must not wait for a banner that is gone
        wait_for(banner_gone, timeout=30, interval=0.5)
        assert "by dr-a" in browser.find_element(By.ID, "going-live").text
    finally:
        web.terminate()
        db.dispose()
