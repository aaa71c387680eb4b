"""DICOM TLS (PS3.15 B.9) against dcmtk's storescu and storescp, with certificates made here.

Two certificate authorities: the site's (``ca``), which signs screener's, the modality's and
the PACS's certificates, and another (``rogue``), which signs a modality's and a PACS's that
must be refused.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import pytest
from support import ServeProcess, build_dicom, c_store, dcmtk_tool, free_port, serve_env, wait_for

pytestmark = pytest.mark.skipif(
    dcmtk_tool("storescu") is None or dcmtk_tool("storescp") is None,
    reason="dcmtk (storescu, storescp) not installed",
)

LEAF = (
    "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
    "extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(folder: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name} CA",
        "-keyout", f"{name}.key", "-out", f"{name}.pem",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=keyCertSign,cRLSign",
        cwd=folder,
    )  # fmt: skip


def _leaf(folder: Path, name: str, ca: str) -> tuple[Path, Path]:
    (folder / "leaf.ext").write_text(LEAF)
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=folder,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-days", "2", "-extfile", "leaf.ext", "-out", f"{name}.pem", cwd=folder,
    )  # fmt: skip
    return folder / f"{name}.key", folder / f"{name}.pem"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pki")
    _ca(folder, "ca")
    _ca(folder, "rogue")
    for name in ("screener", "modality", "pacs"):
        _leaf(folder, name, "ca")
    for name in ("intruder", "fakepacs"):
        _leaf(folder, name, "rogue")
    return folder


def _tls_env(pki: Path, **extra: str) -> dict[str, str]:
    return {
        "SCREENER_TLS_CERTIFICATE": str(pki / "screener.pem"),
        "SCREENER_TLS_PRIVATE_KEY": str(pki / "screener.key"),
        "SCREENER_TLS_CA_CERTIFICATES": str(pki / "ca.pem"),
        **extra,
    }


def _storescu(port: int, film: Path, *tls: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(dcmtk_tool("storescu")), "-to", "20", "-ta", "20", "-td", "20", *tls,
         "-aec", "SCREENER", "127.0.0.1", str(port), str(film)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _count(db: Path, table: str) -> int:
    with sqlite3.connect(db) as c:
        return int(c.execute(f"select count(*) from {table}").fetchone()[0])


def test_a_tls_only_listener_takes_tls_from_the_sites_ca_and_refuses_the_rest(
    tmp_path: Path, pki: Path
) -> None:
    """storescu +tls with a certificate from the site's CA stores; plain TCP and a certificate
    from another CA are refused before any DICOM is read."""
    port, db = free_port(), tmp_path / "s.db"
    env = serve_env(tmp_path, f"sqlite:///{db}", port, screener_worker_enabled="false")
    serve = ServeProcess(tmp_path, {**env, **_tls_env(pki, SCREENER_LISTENER_TLS="true")}).start()
    try:
        assert '"tls": true' in serve.log()
        films = []
        for i in range(3):
            films.append(tmp_path / f"film{i}.dcm")
            films[-1].write_bytes(build_dicom(seed=i))
        good = _storescu(
            port, films[0], "+tls", str(pki / "modality.key"), str(pki / "modality.pem"),
            "+cf", str(pki / "ca.pem"),
        )  # fmt: skip
        assert good.returncode == 0, good.stderr
        wait_for(lambda: _count(db, "instances") == 1)
        plain = _storescu(port, films[1])
        assert plain.returncode != 0
        rogue = _storescu(
            port, films[2], "+tls", str(pki / "intruder.key"), str(pki / "intruder.pem"),
            "+cf", str(pki / "ca.pem"),
        )  # fmt: skip
        assert rogue.returncode != 0
        assert _count(db, "instances") == 1
    finally:
        assert serve.terminate() == 0, serve.log()[-3000:]
    # pynetdicom's complaints about the failed handshakes come through structlog, as JSON
    for line in serve.log().splitlines():
        assert json.loads(line)["event"], line


def test_srs_go_to_a_tls_pacs_and_not_to_one_the_site_ca_did_not_sign(
    tmp_path: Path, pki: Path
) -> None:
    """export.tls: the SR reaches storescp +tls (which requires our certificate); a PACS whose
    certificate another CA signed gets nothing and the delivery stays pending with its error."""
    pacs_port, fake_port, port = free_port(), free_port(), free_port()
    (tmp_path / "pacs").mkdir()
    (tmp_path / "fake").mkdir()
    scps = []
    for name, out, p in (("pacs", "pacs", pacs_port), ("fakepacs", "fake", fake_port)):
        scps.append(
            subprocess.Popen(
                [
                    str(dcmtk_tool("storescp")),
                    "+tls",
                    str(pki / f"{name}.key"),
                    str(pki / f"{name}.pem"),
                    "+cf",
                    str(pki / "ca.pem"),
                    "-od",
                    str(tmp_path / out),
                    "-aet",
                    "PACS",
                    "+xa",
                    str(p),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    db = tmp_path / "s.db"
    env = serve_env(
        tmp_path,
        f"sqlite:///{db}",
        port,
        screener_export_destinations=f"PACS@127.0.0.1:{pacs_port},PACS@127.0.0.1:{fake_port}",
        screener_export_tls="true",
        screener_export_backoff_seconds="60",
    )
    serve = ServeProcess(tmp_path, {**env, **_tls_env(pki)})
    try:
        serve.start()
        film = tmp_path / "film.dcm"
        film.write_bytes(build_dicom(rows=256, columns=256))
        assert c_store(port, [film]) == [0]  # the listener itself is plain TCP here
        wait_for(lambda: list((tmp_path / "pacs").iterdir()), timeout=180, interval=0.2)

        def failed_once() -> bool:
            with sqlite3.connect(db) as c:
                row = c.execute(
                    "select state, attempts, last_error from exports where destination like ?",
                    (f"%:{fake_port}",),
                ).fetchone()
            return bool(row and row[1] >= 1)

        wait_for(failed_once, timeout=60, interval=0.2)
        assert not list((tmp_path / "fake").iterdir())
    finally:
        for scp in scps:
            scp.terminate()
            scp.wait(timeout=30)
        code = serve.terminate() if serve.proc is not None else 0
    assert code == 0, serve.log()[-3000:]
    with sqlite3.connect(db) as c:
        states = dict(c.execute("select destination, state from exports").fetchall())
    assert states[f"PACS@127.0.0.1:{pacs_port}"] == "delivered"
    assert states[f"PACS@127.0.0.1:{fake_port}"] in ("pending", "failed"), states
