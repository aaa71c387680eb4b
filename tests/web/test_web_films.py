"""The study page's film over HTTP against `screener web`: `size=full` gives the stored
Rows x Columns, `window=NAME` a preset of WINDOW_PRESETS at the page's size (an unknown name
is the default, never echoed), MONOCHROME1 still inverted, and a film over
worker.decode_max_pixels refused from its header at either size. Real WG04 films (10-bit,
with a window; the hip MONOCHROME2, the tibia MONOCHROME1) in the spool."""

from __future__ import annotations

import http.client
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from PIL import Image
from support import ServeProcess, data_root, film_dicom, free_port, serve_env, wait_for

from screener.db import Database
from screener.db.migrate import upgrade
from screener.imaging.window import WINDOW_PRESETS
from screener.ingest.accept import Acceptor
from screener.ingest.spool import Spool

#: the pixel budget in these tests: the hip (2140 x 1760 = 3,766,400) fits, "over" does not
MAX_PIXELS = 4_000_000
FILMS = {"hip": "RG2_JLSL.dcm", "tibia": "RG3_JLSL.dcm"}
USER = {"X-Remote-User": "alice"}


def _wg04() -> Path:
    folder = data_root() / "dicom" / "wg04_nonchest"
    if not folder.is_dir():
        pytest.skip(f"real DICOM data not found: looked in {folder} (set SCREENER_DATA)")
    return folder


def _get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("GET", path, headers=USER)
        response = conn.getresponse()
        headers = {k.lower(): v for k, v in response.getheaders()}
        return response.status, headers, response.read()
    finally:
        conn.close()


def _picture(png: bytes) -> npt.NDArray[np.uint8]:
    """The PNG's grey pixels (rows x columns)."""
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(png)) as im:
        assert im.mode == "L"
        return np.asarray(im)


@pytest.fixture(scope="module")
def web(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[int, dict[str, str], dict[str, Path]]]:
    """`screener web` behind a trusted proxy's user header with a pixel budget of MAX_PIXELS,
    serving the WG04 hip and tibia and an 1,800 x 2,400 "over" film; yields the port, each
    film's picture URL and each real film's file."""
    from screener.config import load_settings

    folder = _wg04()
    tmp_path = tmp_path_factory.mktemp("films")
    db_url = f"sqlite:///{tmp_path / 'screener.db'}"
    env = serve_env(
        tmp_path,
        db_url,
        free_port(),
        screener_web_port=str(port := free_port()),
        screener_web_trusted_user_header="X-Remote-User",
        screener_worker_decode_max_pixels=str(MAX_PIXELS),
    )
    db = Database(db_url)
    upgrade(db)
    settings = load_settings(None, environ=env)
    acceptor = Acceptor(db, Spool(settings.storage.spool_dir, 0), settings)
    urls, files = {}, {}
    for name, file in FILMS.items():
        accepted = acceptor.accept((folder / file).read_bytes(), source="dicom")
        urls[name] = f"/study/{accepted.study_instance_uid}/image/{accepted.sop_instance_uid}.png"
        files[name] = folder / file
    over = film_dicom(np.zeros((2400, 1800), np.uint8), accession="OVER")
    accepted = acceptor.accept(over, source="dicom")
    urls["over"] = f"/study/{accepted.study_instance_uid}/image/{accepted.sop_instance_uid}.png"
    db.dispose()
    server = ServeProcess(tmp_path, env, command="web").start()
    # one server for the module: conftest's per-test kill is replaced by this fixture's own
    ServeProcess.started.remove(server)

    def answers() -> bool:
        try:
            return _get(port, "/static/screener.css")[0] == 200
        except OSError:
            return False

    try:
        wait_for(answers, 30)
        yield port, urls, files
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.terminate()


Web = tuple[int, dict[str, str], dict[str, Path]]


def test_size_full_gives_the_stored_rows_and_columns(web: Web) -> None:
    """size=full answers the hip at its stored 1760 x 2140 (Columns x Rows), no-store; no
    size, or any other value, the page's 632 x 768 in the same proportions."""
    port, urls, files = web
    ds = pydicom.dcmread(files["hip"], stop_before_pixels=True)
    status, headers, png = _get(port, urls["hip"] + "?size=full")
    assert status == 200 and headers["content-type"] == "image/png"
    assert headers["cache-control"] == "no-store"
    assert _picture(png).shape == (ds.Rows, ds.Columns) == (2140, 1760)
    for query in ("", "?size=page", "?size=FULL", "?size=99999", "?size=full%00"):
        status, _, png = _get(port, urls["hip"] + query)
        assert status == 200 and _picture(png).shape == (768, 632), query


@pytest.mark.parametrize("film", list(FILMS))
def test_each_preset_gives_a_page_sized_picture_and_wide_and_contrast_differ(
    web: Web, film: str
) -> None:
    """Every preset of WINDOW_PRESETS gives a PNG of the page's size; on a real 10-bit film
    with a sent window, wide and contrast differ from the default by more than 2 grey levels
    in over 30 % of the pixels; an unknown name gives the default's very bytes."""
    port, urls, _files = web
    pictures = {}
    for name in WINDOW_PRESETS:
        status, _, png = _get(port, f"{urls[film]}?window={name}")
        assert status == 200, name
        pictures[name] = _picture(png)
        assert pictures[name].shape == pictures["default"].shape
    assert max(pictures["default"].shape) == 768
    default = pictures["default"].astype(int)
    for name in ("wide", "contrast"):
        assert (np.abs(pictures[name].astype(int) - default) > 2).mean() > 0.3, name
    plain = _get(port, urls[film])[2]
    for unknown in ("lung", "%3Cscript%3Ealert(1)%3C%2Fscript%3E", "WIDE", ""):
        status, headers, png = _get(port, f"{urls[film]}?window={unknown}")
        assert status == 200 and headers["content-type"] == "image/png"
        assert png == plain, unknown


def test_monochrome1_at_full_size_and_wide_is_the_inverted_stored_range(web: Web) -> None:
    """The tibia (MONOCHROME1) at size=full&window=wide is its stored values from the
    lowest (white) to the highest (black), every pixel within one grey level."""
    port, urls, files = web
    ds = pydicom.dcmread(files["tibia"])
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    stored = ds.pixel_array.astype(np.float64)
    status, _, png = _get(port, urls["tibia"] + "?size=full&window=wide")
    assert status == 200
    expected = 255.0 - np.rint((stored - stored.min()) / (stored.max() - stored.min()) * 255.0)
    assert np.abs(_picture(png).astype(int) - expected).max() <= 1


def test_a_film_over_the_pixel_budget_is_refused_at_either_size(web: Web) -> None:
    """A film of 4,320,000 pixels against a budget of 4,000,000 is refused from its header,
    at size=full as at the page's size and under any preset: 422 with the reason word."""
    port, urls, _files = web
    for query in ("?size=full", "", "?size=full&window=contrast"):
        status, _, answer = _get(port, urls["over"] + query)
        assert (status, answer) == (422, b"the film cannot be shown: image_too_large"), query
