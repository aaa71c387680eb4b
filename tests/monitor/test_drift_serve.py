"""The drift alarm on a real `screener serve` with the shipped bundle, fed through the watch
folder: a window of the bundle's own validation films raises nothing; windows of the
shift-proxy family (NORMAL2-IM normals) raise it, once per window, as a log event, a line in
`screener status` (text and JSON), the web status page and the /metrics gauges."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import web.test_web_security as security
from support import assert_accessible, film_dicom, free_port, run_screener, serve_env, wait_for
from web.test_web_pages import _login
from web.test_web_security import Client, _hash

from screener.db import Database
from screener.model import load_bundle
from screener.monitor.drift import DriftReport, SignalDrift
from screener.runtime.heartbeat import Heart

web = security.web  # `screener web` alone over a seeded database

WINDOW = 30


@pytest.fixture(scope="module")
def films(model_bundle: Path, data_dir: Path) -> dict[str, Any]:
    """WINDOW validation films in the split's class mix (every k-th of the sorted split) and
    2 x WINDOW films of the NORMAL2-IM family from outside the validation split."""
    from screener.training import data
    from screener.training.guard import bundle_split

    train, val, root = bundle_split(
        load_bundle(model_bundle, with_guard=False), data_dir / "chest_xray" / "train"
    )
    step = len(val) // WINDOW
    family = [s for s in train if data.family_of(Path(s.path).name) == "NORMAL2-IM"]
    return {
        "validation": data.load_images(root, val[::step][:WINDOW]),
        "shift": data.load_images(root, family[: 2 * WINDOW]),
    }


def _push(incoming: Path, images: Any, tag: str) -> None:
    incoming.mkdir(exist_ok=True)
    for i, pixels in enumerate(images):
        part = incoming / f".{tag}{i}.part"  # renamed in: the watcher never sees half a file
        part.write_bytes(film_dicom(np.asarray(pixels), patient_age="003Y", accession=f"{tag}{i}"))
        part.rename(incoming / f"{tag}{i}.dcm")


def _metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(r"^(screener_(?:drift|flag_rate)\S*) (\S+)$", text, re.M)
    }


def _status(env: dict[str, str], cwd: Path) -> dict[str, Any]:
    out = run_screener(env, cwd, "status", "--json")
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


def _events(log: str, name: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in log.splitlines() if f'"event": "{name}"' in x]


@pytest.mark.timeout(300)  # 48 s on a loaded 2-core host
def test_drift_alarm_fires_for_the_shift_proxy_and_not_for_validation_films(
    tmp_path: Path,
    sqlite_url: str,
    serve_process: Callable[..., Any],
    films: dict[str, Any],
) -> None:
    """Validation films fill a window with no drift (status ok, every gauge under its
    threshold, no drift_detected); NORMAL2-IM normals then raise probability and flag rate:
    drift_detected once for their first window and once again for a second new window, the
    DRIFT line in status and on the web status page, screener_drift over its threshold."""
    mport, wport = free_port(), free_port()
    env = serve_env(
        tmp_path,
        sqlite_url,
        free_port(),
        SCREENER_POPULATION_MAX_AGE_YEARS="-1",  # the bundle's own population: 1 to 5 years
        SCREENER_MONITOR_WINDOW_FILMS=str(WINDOW),
        SCREENER_MONITOR_INTERVAL_SECONDS="1",
        SCREENER_METRICS_PORT=str(mport),
        SCREENER_METRICS_HEARTBEAT_SECONDS="0.5",
        SCREENER_WEB_PORT=str(wport),
        SCREENER_WEB_USERS=json.dumps([f"bob:{_hash()}"]),
    )
    serve = serve_process(env).start()
    incoming = tmp_path / "incoming"

    def drift() -> dict[str, Any]:
        return dict(_status(env, tmp_path).get("drift") or {})

    _push(incoming, films["validation"], "val")
    quiet = wait_for(
        lambda: (d := drift()).get("films") == WINDOW and d["state"] != "collecting" and d,
        timeout=120,
        interval=0.5,
    )
    assert quiet["state"] == "ok", quiet
    assert quiet["drifted"] == []
    gauges = _metrics(mport)
    for signal in ("probability", "flag_rate", "domain_distance", "outside_share", "size"):
        assert (
            gauges[f'screener_drift{{signal="{signal}"}}']
            <= gauges[f'screener_drift_threshold{{signal="{signal}"}}']
        )
    assert gauges["screener_flag_rate"] == pytest.approx(quiet["flag_rate"])
    assert gauges["screener_flag_rate"] > 0.4  # the split's mix: mostly pneumonia
    assert "drift: no drift over the last 30 films" in run_screener(env, tmp_path, "status").stdout
    assert not _events(serve.log(), "drift_detected")
    ready = _events(serve.log(), "drift_monitor_ready")
    assert ready and ready[0]["window"] == WINDOW

    _push(incoming, films["shift"][:WINDOW], "shiftA")
    alarm = wait_for(
        lambda: (
            (d := drift()).get("state") == "drift"
            and {"probability", "flag_rate"} <= set(d["drifted"])
            and d
        ),
        timeout=120,
        interval=0.5,
    )
    assert alarm["flag_rate"] < 0.2  # normals: hardly any flagged
    text = run_screener(env, tmp_path, "status").stdout
    assert re.search(r"^drift: DRIFT over the last 30 films: .*probability \d", text, re.M), text
    gauges = _metrics(mport)
    for signal in ("probability", "flag_rate"):
        assert (
            gauges[f'screener_drift{{signal="{signal}"}}']
            > gauges[f'screener_drift_threshold{{signal="{signal}"}}']
        )
    client = Client(f"http://127.0.0.1:{wport}", "127.0.0.1")
    assert client.login("bob") == 303
    code, _, page = client.get("/status")
    assert code == 200
    section = page[page.index('<section id="drift"') :]
    assert "DRIFT over the last 30 films" in section and 'role="alert"' in section

    _push(incoming, films["shift"][WINDOW:], "shiftB")  # a second window of new films
    wait_for(
        lambda: (
            len([e for e in _events(serve.log(), "drift_detected") if e["signal"] == "probability"])
            >= 2
        ),
        timeout=120,
        interval=0.5,
    )
    # every film scored, and the monitor has looked at the last window several times since
    wait_for(lambda: _status(env, tmp_path)["counts"].get("done") == 3 * WINDOW, 60, 0.5)
    seen = drift()["at"]
    wait_for(lambda: drift()["at"] != seen, 30, 0.5)
    seen = drift()["at"]
    wait_for(lambda: drift()["at"] != seen, 30, 0.5)
    events = _events(serve.log(), "drift_detected")
    probability = [e for e in events if e["signal"] == "probability"]
    assert len(probability) == 2, probability  # once per window, not once per check
    assert probability[0]["window"] == WINDOW
    assert probability[0]["statistic"] > probability[0]["threshold"]
    assert {e["signal"] for e in events} <= {
        "probability",
        "flag_rate",
        "domain_distance",
        "outside_share",
    }


def test_web_status_page_shows_a_drift_accessibly(
    web: Callable[..., Any], sqlite_url: str, browser: Any
) -> None:
    """A serve heartbeat reporting a drifting window: the web status page's drift section
    says DRIFT with the signal in an alert and a table of every signal against its threshold,
    with no serious or critical axe-core violation."""
    from selenium.webdriver.common.by import By

    base, _, _ = web()
    report = DriftReport(
        "drift",
        window=200,
        films=200,
        bundle_uid="1.2.3",
        flag_rate=0.03,
        signals=[
            SignalDrift("probability", 0.61, 0.138),
            SignalDrift("flag_rate", 0.68, 0.102, 0.03, 0.712),
            SignalDrift("size", 0.0, 0.1),
        ],
    )
    db = Database(sqlite_url)
    Heart(db, "serve", details=lambda: {"drift": report.as_dict()}, every_seconds=600).beat()
    db.dispose()
    _login(browser, base)
    browser.get(f"{base}/status")
    alert = browser.find_element(By.CSS_SELECTOR, "#drift [role=alert]")
    assert alert.text.startswith("DRIFT over the last 200 films: probability 0.610 > 0.138")
    rows = browser.find_element(By.ID, "drift-signals").text
    assert "flag rate" in rows and "total-variation distance" in rows
    assert_accessible(browser, "status with a drift")
