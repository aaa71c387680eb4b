"""`screener commission` over a real database: the table of candidate thresholds from the
weighted reads, the refusal that names how many more reads it needs, and the site bundle it
writes (new UID, refitted calibration, the recommended rule's threshold, the table in the
card, pictures)."""

from __future__ import annotations

import contextlib
import http.client
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select
from support import (
    ServeProcess,
    assert_accessible,
    build_dicom,
    free_port,
    record_result,
    scoring_site,
    screenshots,
    serve_env,
    wait_for,
)

from screener.cli import main
from screener.db import Study, utcnow
from screener.db.models import AuditDraw
from screener.model import commission, rules
from screener.model.bundle import read_metadata
from screener.model.calibration import Platt, fit_platt
from screener.views.worklist import record_review


def _site(
    tmp_path: Path,
    db_url: str,
    make_settings: Callable[..., Any],
    model_bundle: Path,
    positives: int,
    negatives: int,
) -> tuple[Any, Path, dict[str, Any]]:
    """A copy of the shipped bundle and studies it scored, each read by its truth: every
    second study drawn for an audit at share 0.5 (weight 2 when unflagged), the others not
    (their reads of unflagged studies weigh 0). Returns what the reads should weigh."""
    bundle, meta, settings, db, acceptor = scoring_site(
        tmp_path, db_url, make_settings, model_bundle
    )
    rng = np.random.default_rng(11)
    probs = np.r_[rng.beta(6, 1.2, positives), rng.beta(1.2, 4, negatives)].clip(0.001, 0.999)
    truth = np.r_[np.ones(positives, dtype=np.int64), np.zeros(negatives, dtype=np.int64)]
    threshold = float(meta["threshold"])
    uids = []
    for i, (p, read) in enumerate(zip(probs, truth, strict=True)):
        accepted = acceptor.accept(build_dicom(seed=i), source="dicom")
        record_result(
            db, accepted.sop_instance_uid, float(p), threshold,
            (meta["name"], meta["version"], meta["uid"]), domain_score=1.0,
        )  # fmt: skip
        record_review(db, accepted.study_instance_uid, bool(read) == (p >= threshold), None, 12)
        uids.append(accepted.study_instance_uid)
    drawn = np.arange(len(probs)) % 2 == 0
    with db.transaction() as s:
        for uid, d in zip(uids, drawn, strict=True):
            study_id = s.scalars(select(Study.id).where(Study.study_instance_uid == uid)).one()
            s.add(AuditDraw(study_id=study_id, u=0.25 if d else 0.75, share=0.5, drawn_at=utcnow()))
    db.dispose()
    flagged = probs >= threshold
    weights = np.where(flagged, 1.0, np.where(drawn, 2.0, 0.0))
    return settings, bundle, {"probs": probs, "truth": truth, "weights": weights}


def _commission(settings: Any, bundle: Path, *extra: str) -> int:
    """`screener commission` on the settings' database."""
    db = ["--set", f"database.url={settings.database.url}"]
    return main([*db, "commission", "--model", str(bundle), *extra])


def test_commission_shows_the_table_and_writes_the_site_bundle(
    tmp_path: Path,
    db_url: str,
    make_settings: Callable[..., Any],
    model_bundle: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The table lists every rule's threshold with intervals and flags per 100; --out writes a
    bundle whose threshold is bootstrap 90 % on the weighted reads after the refitted
    calibration, with a new UID naming its parent, the table in model.json and the card."""
    settings, bundle, site = _site(tmp_path, db_url, make_settings, model_bundle, 90, 160)
    out, plots = tmp_path / "site-bundle", tmp_path / "pictures"
    assert _commission(settings, bundle, "--out", str(out), "--plots", str(plots)) == 0
    printed = capsys.readouterr().out
    keep = site["weights"] > 0
    y, p, w = site["truth"][keep], site["probs"][keep], site["weights"][keep]
    assert f"reads        {int(keep.sum())} used" in printed
    assert f"{int((~keep).sum())} reads of unflagged studies not drawn left out" in printed
    for name, _ in commission.RULES.values():
        assert name in printed
    assert "recommended  bootstrap 90 %" in printed and "flags/100" in printed
    old, new = read_metadata(bundle), read_metadata(out)
    assert new["uid"] != old["uid"] and new["derived_from"]["uid"] == old["uid"]
    local = fit_platt(y, p, weights=w)
    expected = rules.weighted_bootstrap_threshold(y, local.apply(p), 0.95, w)
    assert new["threshold"] == pytest.approx(expected)
    assert Platt.from_json(new["calibration"]).a != Platt.from_json(old["calibration"]).a
    record = new["commissioning"]
    assert record["rule"] == "bootstrap90" and record["audit_reads"] == int(
        (keep & (site["probs"] < old["threshold"])).sum()
    )
    assert len(record["candidates"]) >= 4
    card = (out / "MODEL_CARD.md").read_text()
    assert "### Commissioning" in card and "bootstrap 90 % (recommended)" in card
    for picture in ("roc.png", "calibration.png"):
        assert (plots / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # commissioned again on the same reads, the site bundle's own scale gives back its threshold:
    # the parent's P are mapped through the refit (parent_to_own), not taken as they are
    assert _commission(settings, out, "--keep-calibration") == 0
    again = capsys.readouterr().out
    row = next(x for x in again.splitlines() if "bootstrap 90 % (recommended)" in x)
    assert f"{new['threshold']:.4f}" in row and "the bundle's threshold now" in row
    # with the site bundle configured, stats names it
    main(
        ["--set", f"database.url={settings.database.url}", "--set", f"model.bundle={out}", "stats"]
    )
    assert new["version"] in capsys.readouterr().out


def test_commission_refuses_to_write_with_too_few_reads(
    tmp_path: Path,
    sqlite_url: str,
    make_settings: Callable[..., Any],
    model_bundle: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """30 read pneumonias and few audit reads: the table is still shown, the bundle is not
    written, and the refusal names how many more reads of each kind it needs."""
    settings, bundle, _ = _site(tmp_path, sqlite_url, make_settings, model_bundle, 30, 30)
    out = tmp_path / "site-bundle"
    assert _commission(settings, bundle, "--out", str(out)) == 1
    printed = capsys.readouterr().out
    assert "threshold" in printed and "refused" in printed
    assert "30 reads as pneumonia, 52 needed for sensitivity 0.95: 22 more" in printed
    assert "audit reads read as normal, 20 needed" in printed
    assert not out.exists()


def _get(port: int, path: str) -> tuple[int, bytes]:
    """GET as alice, named by the trusted header from loopback (the default trusted proxy)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path, headers={"X-Remote-User": "alice"})
        response = conn.getresponse()
        return response.status, response.read()
    except OSError:
        return 0, b""
    finally:
        conn.close()


@contextlib.contextmanager
def _web(tmp_path: Path, db_url: str, bundle: Path) -> Iterator[int]:
    """`screener web` alone on the site's database with ``bundle``, naming each caller from
    the X-Remote-User header; yields its port once the commissioning page answers."""
    port = free_port()
    env = serve_env(
        tmp_path,
        db_url,
        free_port(),
        screener_model_bundle=str(bundle),
        screener_web_port=str(port),
        screener_web_trusted_user_header="X-Remote-User",
    )
    proc = ServeProcess(tmp_path, env, command="web").start()
    try:
        wait_for(lambda: _get(port, "/commission")[0] == 200, 60)
        yield port
    finally:
        proc.terminate()


def test_commissioning_page_shows_the_same_table(
    tmp_path: Path,
    sqlite_url: str,
    make_settings: Callable[..., Any],
    model_bundle: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`screener web` shows the command's candidate table, its recommended threshold and both
    pictures, and (with enough reads) no shortfall."""
    settings, bundle, _ = _site(tmp_path, sqlite_url, make_settings, model_bundle, 90, 160)
    assert _commission(settings, bundle) == 0
    printed = capsys.readouterr().out
    rec = next(line for line in printed.splitlines() if line.startswith("recommended"))
    threshold = rec.split("threshold ")[1].split(",")[0]
    with _web(tmp_path, sqlite_url, bundle) as port:
        status, body = _get(port, "/commission")
        page = body.decode()
        assert (
            'id="candidates"' in page
            and f"Recommended: bootstrap 90 %</strong>, threshold {threshold}" in page
        )
        assert page.count('<tr class="recommended">') == 1
        for name, _ in commission.RULES.values():
            assert name in page
        for picture in ("roc", "calibration"):
            status, png = _get(port, f"/commission/{picture}.png")
            assert status == 200 and png[:8] == b"\x89PNG\r\n\x1a\n"
        assert 'href="/commission"' in page and 'id="not-yet"' not in page


@pytest.mark.timeout(300)
def test_commissioning_page_in_the_browser(
    tmp_path: Path,
    sqlite_url: str,
    make_settings: Callable[..., Any],
    model_bundle: Path,
    browser: Any,
) -> None:
    """In Debian's headless chromium the commissioning page shows the candidate table (one
    recommended row, every rule) and both pictures decoded, and axe-core finds no serious or
    critical violation; its screenshot goes to var/test-screenshots/."""
    from selenium.webdriver.common.by import By

    _, bundle, _ = _site(tmp_path, sqlite_url, make_settings, model_bundle, 90, 160)
    # every request of the page (its pictures too) names alice, as a trusted proxy would
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"X-Remote-User": "alice"}})
    with _web(tmp_path, sqlite_url, bundle) as port:
        browser.get(f"http://127.0.0.1:{port}/commission")
        table = browser.find_element(By.ID, "candidates")
        assert len(table.find_elements(By.CSS_SELECTOR, "tbody tr.recommended")) == 1
        for name, _ in commission.RULES.values():
            assert name in table.text
        pictures = [
            browser.find_element(By.CSS_SELECTOR, f"img.{w}") for w in ("roc", "calibration")
        ]
        loaded = "return arguments[0].complete && arguments[0].naturalWidth > 0"
        wait_for(lambda: all(browser.execute_script(loaded, img) for img in pictures), 60)
        browser.save_screenshot(str(screenshots() / "30-commission.png"))
        assert_accessible(browser, "commission")
