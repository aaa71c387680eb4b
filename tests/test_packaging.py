"""Packaging: the wheel carries migrations/ and models/, and an installed screener runs anywhere.

The slow test builds the wheel, installs it into a fresh virtual environment outside the
checkout (its third-party dependencies borrowed from the project's .venv through a ``.pth``
line, so nothing is downloaded), and from a folder that is neither the checkout nor the
configuration file's runs ``screener db upgrade`` and a short ``screener serve`` that
receives and scores one film. The systemd units are checked with ``systemd-analyze verify``
against that installed ``screener``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest
from support import REPO, build_dicom, c_store, free_port, wait_for

from screener.config import load_settings


def test_the_wheel_lists_every_package_of_the_source_tree() -> None:
    """pyproject's explicit package list = screener's sub-packages + the two mapped folders."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    listed = set(project["tool"]["setuptools"]["packages"])
    found = {
        ".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "screener").rglob("__init__.py")
    }
    assert listed == found | {
        "screener.migrations",
        "screener.migrations.versions",
        "screener.bundles",
    }
    mapped = project["tool"]["setuptools"]["package-dir"]
    assert mapped == {"screener.migrations": "migrations", "screener.bundles": "models"}


def test_the_etc_configuration_has_absolute_paths() -> None:
    """deploy/screener.toml (for /etc/screener) is valid and puts all state under /var/lib/screener."""
    settings = load_settings(REPO / "deploy" / "screener.toml", environ={})
    assert settings.database.url == "sqlite:////var/lib/screener/screener.db"
    for path in (settings.storage.spool_dir, settings.watch.dir, settings.watch.rejected_dir):
        assert path.startswith("/var/lib/screener/"), path


def test_relative_paths_resolve_against_the_configuration_file(tmp_path: Path) -> None:
    """Paths in the file (and the defaults) resolve against its folder; the environment's against
    the current folder; an empty model.bundle is the shipped bundle."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "screener.toml").write_text('[storage]\nspool_dir = "data/spool"\n')
    settings = load_settings(site / "screener.toml", environ={"SCREENER_WATCH_DIR": "in"})
    assert settings.storage.spool_dir == str(site / "data" / "spool")
    assert settings.database.url == f"sqlite:///{site}/var/screener.db"
    assert settings.watch.dir == str(Path.cwd() / "in")
    assert settings.config_file == str(site / "screener.toml")
    assert (Path(settings.model.bundle) / "model.json").is_file()


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv outside the checkout with the built wheel installed; returns its bin/."""
    root = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(root / "dist"), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (root / "dist").glob("screener-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "screener/migrations/env.py" in names
    assert "screener/bundles/screener-default/model.keras" in names
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    # Dependencies from the project's venv (a plain path line: its .pth files, among them the
    # editable install of the checkout, are not processed).
    (Path(site) / "borrowed-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = subprocess.run(
        [str(py), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return venv / "bin"


@pytest.mark.slow
def test_an_installed_wheel_migrates_and_serves_from_any_folder(
    installed: Path, tmp_path: Path
) -> None:
    """The installed wheel migrates, serves, scores a C-STORE and reports it from any working
    folder, with paths relative to its config file."""
    site, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    site.mkdir()
    elsewhere.mkdir()
    port = free_port()
    config = site / "screener.toml"
    config.write_text(
        '[database]\nurl = "sqlite:///state/screener.db"\n'
        '[storage]\nspool_dir = "state/spool"\nmin_free_mb = 0\n'
        f'[listener]\nhost = "127.0.0.1"\nport = {port}\n'
        '[watch]\ndir = "state/incoming"\nrejected_dir = "state/rejected"\n'
        "[population]\nmax_age_years = 120\n"
        '[logging]\nformat = "json"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCREENER_")}
    env |= {"PATH": f"{installed}:{env.get('PATH', '')}", "SCREENER_CONFIG": str(config)}
    screener = str(installed / "screener")

    where = subprocess.run(
        [str(installed / "python"), "-c", "import screener; print(screener.__file__)"],
        capture_output=True, text=True, cwd=elsewhere, env=env, check=True,
    ).stdout  # fmt: skip
    assert Path(where).resolve().is_relative_to(installed.parent.resolve()), where

    # A read-only command before the database exists: one line, nothing created.
    early = subprocess.run(
        [screener, "status"], capture_output=True, text=True, cwd=elsewhere, env=env, timeout=120
    )
    assert early.returncode == 1 and "screener db upgrade" in early.stderr, early.stderr
    assert len(early.stderr.strip().splitlines()) == 1 and not (site / "state").exists()

    up = subprocess.run(
        [screener, "db", "upgrade"], capture_output=True, text=True, cwd=elsewhere, env=env,
        timeout=120,
    )  # fmt: skip
    assert up.returncode == 0, up.stderr
    assert (site / "state" / "screener.db").is_file() and not (elsewhere / "var").exists()

    log = (tmp_path / "serve.log").open("w")
    serve = subprocess.Popen(
        [screener, "serve"], cwd=elsewhere, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:

        def started() -> dict[str, object] | None:
            for line in (tmp_path / "serve.log").read_text().splitlines():
                if '"daemon_started"' in line:
                    return dict(json.loads(line))
            assert serve.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            return None

        event = wait_for(started, timeout=120, interval=0.2)
        assert Path(str(event["model_bundle"])).is_relative_to(installed.parent.resolve())
        assert event["config_file"] == str(config)
        film = tmp_path / "film.dcm"
        film.write_bytes(build_dicom(rows=256, columns=256))
        assert c_store(port, [film]) == [0]

        def scored() -> bool:
            with sqlite3.connect(site / "state" / "screener.db") as c:
                (n,) = c.execute("select count(*) from results").fetchone()
            return bool(n)

        wait_for(scored, timeout=120, interval=0.2)
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=120)
        log.close()
    assert serve.returncode == 0, (tmp_path / "serve.log").read_text()[-3000:]
    status = subprocess.run(
        [screener, "status"], capture_output=True, text=True, cwd=elsewhere, env=env, timeout=120
    )
    assert status.returncode == 0 and "done" in status.stdout, status.stderr


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
@pytest.mark.parametrize("unit", ["screener.service", "screener-rescan.service"])
def test_the_systemd_units_verify(installed: Path, tmp_path: Path, unit: str) -> None:
    """``systemd-analyze verify`` finds nothing to say about the units, with ExecStart pointing
    at the installed screener (the units name /opt/screener/venv/bin/screener)."""
    text = (REPO / "deploy" / unit).read_text()
    assert "ExecStart=/opt/screener/venv/bin/screener " in text
    copy = tmp_path / unit
    copy.write_text(text.replace("/opt/screener/venv/bin/screener", str(installed / "screener")))
    paths = [str(copy)]
    if unit == "screener-rescan.service":
        timer = tmp_path / "screener-rescan.timer"
        timer.write_text((REPO / "deploy" / "screener-rescan.timer").read_text())
        paths.append(str(timer))
    checked = subprocess.run(
        ["systemd-analyze", "verify", *paths], capture_output=True, text=True, timeout=120
    )
    said = [line for line in (checked.stdout + checked.stderr).splitlines() if unit in line]
    assert checked.returncode == 0 and not said, checked.stdout + checked.stderr
