"""The whole loop through real processes: storescu -> `screener serve` -> SR at a storescp PACS
stand-in, the result in `screener worklist`; and a PACS that is down, then comes back."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from support import (
    ServeProcess,
    dcmtk_tool,
    free_port,
    run_screener,
    serve_env,
    sr_deliveries,
    storescu,
    wait_for,
)

STORESCP = dcmtk_tool("storescp")  # dcmtk's, not pynetdicom's storescp in .venv/bin
DSRDUMP = dcmtk_tool("dsrdump")

pytestmark = pytest.mark.skipif(
    STORESCP is None or DSRDUMP is None, reason="dcmtk (storescp, dsrdump) not installed"
)


class Storescp:
    """dcmtk's storescp as the PACS; +uf keeps every received copy, so a resent SR is a second file."""

    def __init__(self, out: Path, port: int) -> None:
        assert STORESCP is not None
        out.mkdir(parents=True, exist_ok=True)
        self.out, self.port = out, port
        self.proc = subprocess.Popen(
            [STORESCP, "-od", str(out), "-aet", "PACS", "+xa", "+uf", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def files(self) -> list[Path]:
        return sorted(self.out.iterdir())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[Callable[[int], Storescp]]:
    started: list[Storescp] = []

    def start(port: int) -> Storescp:
        p = Storescp(tmp_path / f"pacs-{len(started)}", port)
        started.append(p)
        return p

    yield start
    for p in started:
        if p.proc.poll() is None:
            p.stop()


def _serve_to_pacs(
    tmp_path: Path,
    db_url: str,
    serve_process: Callable[[dict[str, str]], ServeProcess],
    pacs_port: int,
    **extra: str,
) -> tuple[dict[str, str], int, Any]:
    """``screener serve`` sending its SRs to PACS@127.0.0.1:``pacs_port``: (env, port, daemon)."""
    port = free_port()
    env = serve_env(
        tmp_path, db_url, port, SCREENER_EXPORT_DESTINATIONS=f"PACS@127.0.0.1:{pacs_port}", **extra
    )
    return env, port, serve_process(env).start()


def _screener(env: dict[str, str], cwd: Path, *args: str) -> str:
    out = run_screener(env, cwd, *args)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _exports(env: dict[str, str], cwd: Path) -> dict[str, int]:
    """The export counts of `screener status`: pending, delivered, dead."""
    return dict(json.loads(_screener(env, cwd, "status", "--json"))["exports"])


def _assert_each_source_has_one_sr(store: Storescp, films: list[Path]) -> None:
    """Every received SR has a SOP Instance UID of its own, and each film is referenced by exactly one."""
    per_sr, per_source = sr_deliveries(store.files())
    twice = {uid: n for uid, n in per_sr.items() if n != 1}
    assert not twice, f"SR received more than once: {twice}"
    sources = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID): 1 for f in films}
    assert dict(per_source) == sources, f"SRs per source image: {dict(per_source)}"


def test_chest_film_to_sr_and_worklist(
    tmp_path: Path,
    sqlite_url: str,
    serve_process: Callable[[dict[str, str]], ServeProcess],
    pacs: Callable[[int], Storescp],
    dicom_dir: Path,
    model_bundle: Path,
) -> None:
    """Three chest films pushed with storescu come back as three SRs at the PACS (sent when the worker wakes the exporter) and appear in the worklist."""
    pacs_port = free_port()
    store = pacs(pacs_port)
    # an hour between polls: the SRs can only arrive because the worker wakes the exporter
    env, port, daemon = _serve_to_pacs(
        tmp_path, sqlite_url, serve_process, pacs_port, SCREENER_EXPORT_POLL_SECONDS="3600"
    )
    films = sorted((dicom_dir / "siim_chest_cr").glob("*.dcm"))[:3]
    storescu(port, films)
    wait_for(lambda: len(store.files()) >= 3, timeout=120, interval=0.2)
    wait_for(lambda: _exports(env, tmp_path)["delivered"] == 3, timeout=60, interval=0.2)
    _assert_each_source_has_one_sr(store, films)
    sources = {str(dcmread(f, stop_before_pixels=True).StudyInstanceUID) for f in films}
    assert DSRDUMP is not None
    for sr_file in store.files():
        sr = dcmread(sr_file)
        assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
        assert str(sr.StudyInstanceUID) in sources
        dump = subprocess.run([DSRDUMP, str(sr_file)], capture_output=True, text=True, timeout=30)
        assert dump.returncode == 0 and "Pneumonia" in dump.stdout
    rows = json.loads(_screener(env, tmp_path, "worklist", "--format", "json"))
    assert {r["study_instance_uid"] for r in rows} == sources
    assert all(0.0 <= r["probability"] <= 1.0 for r in rows)
    status = json.loads(_screener(env, tmp_path, "status", "--json"))
    assert status["exports"] == {"pending": 0, "delivered": 3, "dead": 0}
    assert status["counts"]["done"] == 3
    assert daemon.terminate() == 0


def test_pacs_down_then_up_gets_everything_once(
    tmp_path: Path,
    sqlite_url: str,
    serve_process: Callable[[dict[str, str]], ServeProcess],
    pacs: Callable[[int], Storescp],
    dicom_dir: Path,
    model_bundle: Path,
) -> None:
    """Results made while the PACS is down wait; once it is up every SR is delivered, none twice."""
    pacs_port = free_port()  # nothing listening there yet
    env, port, daemon = _serve_to_pacs(
        tmp_path,
        sqlite_url,
        serve_process,
        pacs_port,
        SCREENER_EXPORT_BACKOFF_SECONDS="0.5",
        SCREENER_EXPORT_BACKOFF_MAX_SECONDS="1",
    )
    films = sorted((dicom_dir / "siim_chest_cr").glob("*.dcm"))[3:6]
    storescu(port, films)

    def attempted() -> bool:
        """All three scored, and each SR delivery tried at least once and failed."""
        s = json.loads(_screener(env, tmp_path, "status", "--json"))
        if s["counts"]["done"] != 3 or s["exports"]["pending"] != 3:
            return False
        rows = json.loads(_screener(env, tmp_path, "exports", "list", "--json"))
        return len(rows) == 3 and all(e["attempts"] >= 1 and e["last_error"] for e in rows)

    wait_for(attempted, timeout=240, interval=0.5)
    store = pacs(pacs_port)
    # storescp runs with +uf: a resent SR would be a second file, not overwrite the first
    wait_for(lambda: _exports(env, tmp_path)["delivered"] == 3, timeout=60, interval=0.2)
    assert _exports(env, tmp_path) == {"pending": 0, "delivered": 3, "dead": 0}
    _assert_each_source_has_one_sr(store, films)  # no SR twice
    assert daemon.terminate() == 0


def test_heatmap_capture_goes_with_the_sr(
    tmp_path: Path,
    sqlite_url: str,
    serve_process: Callable[[dict[str, str]], ServeProcess],
    pacs: Callable[[int], Storescp],
    dicom_dir: Path,
    model_bundle: Path,
) -> None:
    """With export.heatmap_capture the PACS gets the SR and a Secondary Capture of the Grad-CAM overlay, in the film's study."""
    pacs_port = free_port()
    store = pacs(pacs_port)
    _env, port, daemon = _serve_to_pacs(
        tmp_path, sqlite_url, serve_process, pacs_port, SCREENER_EXPORT_HEATMAP_CAPTURE="true"
    )
    film = sorted((dicom_dir / "siim_chest_cr").glob("*.dcm"))[0]
    storescu(port, [film])
    wait_for(lambda: len(store.files()) == 2, timeout=240, interval=0.2)
    _assert_each_source_has_one_sr(store, [film])
    received = {str(d.SOPClassUID): d for d in (dcmread(f) for f in store.files())}
    assert set(received) == {"1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.7"}
    capture = received["1.2.840.10008.5.1.4.1.1.7"]
    assert capture.StudyInstanceUID == dcmread(film, stop_before_pixels=True).StudyInstanceUID
    assert capture.PhotometricInterpretation == "RGB" and capture.Rows >= 224
    assert daemon.terminate() == 0
