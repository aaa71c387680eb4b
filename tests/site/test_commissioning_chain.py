"""A site commissions the model as a hospital would, over real processes: `screener serve` in
shadow with dcmtk's storescp as PACS; a window of validation films raises no drift; a few
hundred films of the shift-proxy site (NORMAL2-IM normals and unseen-patient pneumonias,
pushed by storescu) raise it, and nothing reaches the storescp; the flagged studies and the
AUDIT READ ones are read by `screener review` and on the web; `screener commission` shows the
table and writes the site bundle; `screener site go-live` with it; the next film's SR at the
PACS names the site bundle, and so does the worklist."""

from __future__ import annotations

import http.client
import json
import re
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from support import (
    Storescp,
    dcmtk_tool,
    export_states,
    film_dicom,
    free_port,
    run_screener,
    serve_env,
    sr_deliveries,
    storescu,
    wait_for,
)

from screener.model import load_bundle
from screener.model.bundle import read_metadata

WINDOW = 30
NORMALS, PNEUMONIAS = 150, 70
#: the concept name of the Device Observer UID content item (DCM 121012, PS3.16 TID 1004)
DEVICE_OBSERVER_UID = "121012"


@pytest.fixture(scope="module")
def films(model_bundle: Path, data_dir: Path) -> dict[str, Any]:
    """WINDOW validation films in the split's class mix; the shift-proxy site: NORMALS films of
    the NORMAL2-IM family and PNEUMONIAS validation pneumonias not among those."""
    from screener.training import data
    from screener.training.guard import bundle_split

    train, val, root = bundle_split(
        load_bundle(model_bundle, with_guard=False), data_dir / "chest_xray" / "train"
    )
    step = len(val) // WINDOW
    window = val[::step][:WINDOW]
    family = [s for s in train if data.family_of(Path(s.path).name) == "NORMAL2-IM"][:NORMALS]
    pneumonias = [s for s in val if s.label == 1 and s not in window][:PNEUMONIAS]
    return {
        "validation": (data.load_images(root, window), [s.label for s in window]),
        "normals": data.load_images(root, family),
        "pneumonias": data.load_images(root, pneumonias),
    }


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[Storescp]:
    if dcmtk_tool("storescp") is None:
        pytest.skip("dcmtk's storescp is not installed")
    scp = Storescp(tmp_path / "pacs")
    yield scp
    scp.stop()


def _write(
    folder: Path, images: Any, truths: list[int], tag: str
) -> tuple[list[Path], dict[str, int]]:
    """Each image as a pediatric CR file whose accession number says what it shows."""
    folder.mkdir(parents=True, exist_ok=True)
    paths, truth = [], {}
    for i, (pixels, y) in enumerate(zip(images, truths, strict=True)):
        accession = f"{tag}{i}"
        path = folder / f"{accession}.dcm"
        path.write_bytes(film_dicom(np.asarray(pixels), patient_age="003Y", accession=accession))
        paths.append(path)
        truth[accession] = int(y)
    return paths, truth


def _screener(env: dict[str, str], cwd: Path, *args: str) -> str:
    out = run_screener(env, cwd, *args)
    assert out.returncode == 0, (args, out.stdout[-2000:], out.stderr[-2000:])
    return out.stdout


class _Reader:
    """A radiologist on the web, named by the trusted header from loopback: keeps cookies and
    the page's CSRF token, and records reads with the study page's form."""

    def __init__(self, port: int, user: str) -> None:
        self.port, self.user = port, user
        self.cookies: dict[str, str] = {}

    def request(
        self, method: str, path: str, form: dict[str, str] | None = None
    ) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        headers = {"X-Remote-User": self.user}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            for name, value in response.getheaders():
                if name.lower() == "set-cookie":
                    key, _, rest = value.partition("=")
                    self.cookies[key] = rest.split(";")[0].strip('"')
            return response.status, response.read().decode(errors="replace")
        finally:
            conn.close()

    def read(self, study_uid: str, finding: str) -> None:
        status, page = self.request("GET", f"/study/{study_uid}")
        assert status == 200, page[:500]
        token = re.search(r'name="csrf" value="([^"]+)"', page)
        assert token is not None
        status, page = self.request(
            "POST", f"/study/{study_uid}/review", {"csrf": token.group(1), "finding": finding}
        )
        assert status in (200, 303), page[:500]


def _device_observer_uids(ds: Any) -> list[str]:
    """The Device Observer UIDs anywhere in an SR's content tree."""
    found = []
    for item in ds.get("ContentSequence", []):
        name = item.get("ConceptNameCodeSequence")
        if name and name[0].CodeValue == DEVICE_OBSERVER_UID and "UID" in item:
            found.append(str(item.UID))
        found += _device_observer_uids(item)
    return found


@pytest.mark.timeout(900)
def test_a_site_commissions_the_model_and_goes_live(
    tmp_path: Path,
    sqlite_url: str,
    serve_process: Callable[..., Any],
    films: dict[str, Any],
    pacs: Storescp,
) -> None:
    """Shadow, drift on the new site's films (not on validation films), nothing at the PACS,
    audit and flagged reads by CLI and web, commission writes the site bundle, go-live, and
    the next SR and the worklist name the site bundle."""
    web_port = free_port()
    env = serve_env(
        tmp_path,
        sqlite_url,
        free_port(),
        SCREENER_POPULATION_MAX_AGE_YEARS="-1",  # the bundle's own population: 1 to 5 years
        SCREENER_SITE_MODE="shadow",
        SCREENER_SITE_AUDIT_SHARE="0.3",
        SCREENER_EXPORT_DESTINATIONS=pacs.destination,
        SCREENER_EXPORT_POLL_SECONDS="0.2",
        SCREENER_MONITOR_WINDOW_FILMS=str(WINDOW),
        SCREENER_MONITOR_INTERVAL_SECONDS="1",
        SCREENER_WEB_PORT=str(web_port),
        SCREENER_WEB_TRUSTED_USER_HEADER="X-Remote-User",
    )
    port = int(env["SCREENER_LISTENER_PORT"])
    serve = serve_process(env).start()

    def drift() -> dict[str, Any]:
        return dict(json.loads(_screener(env, tmp_path, "status", "--json")).get("drift") or {})

    def done() -> int:
        return int(
            json.loads(_screener(env, tmp_path, "status", "--json"))["counts"].get("done", 0)
        )

    # a window of the bundle's own validation films: no alarm
    images, labels = films["validation"]
    paths, truth = _write(tmp_path / "films", images, labels, "V")
    storescu(port, paths)
    quiet = wait_for(
        lambda: (d := drift()).get("films") == WINDOW and d["state"] != "collecting" and d,
        timeout=180,
        interval=0.5,
    )
    assert quiet["state"] == "ok" and quiet["drifted"] == [], quiet

    # the new site: normals of the shift-proxy family and pneumonias, interleaved
    normals, normal_truth = _write(tmp_path / "films", films["normals"], [0] * NORMALS, "N")
    sick, sick_truth = _write(tmp_path / "films", films["pneumonias"], [1] * PNEUMONIAS, "P")
    truth |= normal_truth | sick_truth
    site = normals + sick
    np.random.default_rng(5).shuffle(site)
    for start in range(0, len(site), 60):
        storescu(port, site[start : start + 60])
    total = WINDOW + NORMALS + PNEUMONIAS
    wait_for(lambda: done() == total, timeout=300, interval=1)
    alarm = wait_for(lambda: (d := drift()).get("state") == "drift" and d, 60, 0.5)
    assert alarm["drifted"], alarm
    assert '"event": "drift_detected"' in serve.log()
    wait_for(lambda: export_states(sqlite_url) == {"shadow": total}, timeout=60, interval=0.5)
    assert pacs.files() == []  # silent: nothing reached the PACS

    # the radiologists read what the worklist gives them: flagged studies and AUDIT READ ones
    rows = json.loads(
        _screener(env, tmp_path, "worklist", "--status", "all", "--limit", "0", "--format", "json")
    )
    assert len(rows) == total
    to_read = [r for r in rows if r["flagged"] or r["audit"]]
    audited = [r for r in rows if r["audit"]]
    assert all(not r["flagged"] for r in audited) and len(audited) >= 25
    by_cli, by_web = to_read[:3], to_read[3:]
    for r in by_cli:
        finding = "--pneumonia" if truth[r["accession_number"]] else "--no-pneumonia"
        _screener(env, tmp_path, "review", r["study_instance_uid"], finding, "--reader", "dr-b")
    reader = _Reader(web_port, "dr-c")
    for r in by_web:
        finding = "pneumonia" if truth[r["accession_number"]] else "no_pneumonia"
        reader.read(r["study_instance_uid"], finding)
    reviewed = json.loads(
        _screener(
            env, tmp_path, "worklist", "--status", "reviewed", "--limit", "0", "--format", "json"
        )
    )
    assert len(reviewed) == len(to_read)
    assert {r["reader"] for r in reviewed} == {"dr-b", "dr-c"}

    # commissioning: the table, then the site bundle
    site_bundle = tmp_path / "site-bundle"
    said = _screener(env, tmp_path, "commission", "--out", str(site_bundle))
    assert "recommended  bootstrap 90 %" in said and "flags/100" in said, said
    assert f"{len(audited)} audit reads" in said
    shipped, new = read_metadata(env["SCREENER_MODEL_BUNDLE"]), read_metadata(site_bundle)
    assert new["derived_from"]["uid"] == shipped["uid"] and new["uid"] != shipped["uid"]
    assert new["commissioning"]["rule"] == "bootstrap90"
    assert "reference made of this site's" in said

    # go live with the site bundle: restart serve on it, then record the go-live
    assert serve.terminate() == 0
    live_env = {**env, "SCREENER_MODEL_BUNDLE": str(site_bundle)}
    _screener(live_env, tmp_path, "site", "go-live", "--operator", "dr-a")
    serve = serve_process(live_env).start()
    status = json.loads(_screener(live_env, tmp_path, "status", "--json"))
    assert status["site"]["mode"] == "live" and status["site"]["event"]["bundle_uid"] == new["uid"]
    next_film, _ = _write(tmp_path / "next", films["pneumonias"][-1:], [1], "X")
    storescu(port, next_film)
    wait_for(lambda: len(pacs.files()) >= 1, timeout=180, interval=0.2)
    wait_for(
        lambda: export_states(sqlite_url) == {"shadow": total, "delivered": 1},
        timeout=60,
        interval=0.2,
    )
    per_sr, _ = sr_deliveries(pacs.files())
    assert list(per_sr.values()) == [1]  # the one live SR; none of the shadow ones
    sr = dcmread(pacs.files()[0])
    assert new["uid"] in _device_observer_uids(sr)
    rows = json.loads(
        _screener(
            live_env, tmp_path, "worklist", "--status", "all", "--limit", "0", "--format", "json"
        )
    )
    latest = next(r for r in rows if r["accession_number"] == "X0")
    assert latest["model_uid"] == new["uid"] and latest["model_version"] == new["version"]
    assert serve.terminate() == 0
