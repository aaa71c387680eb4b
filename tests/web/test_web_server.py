"""The web server cannot be stalled: idle and trickling sockets are closed after
web.header_timeout_seconds, one client address holds at most web.max_connections_per_client
connections, and film pictures are made in the film process under the decode limits (a film
over worker.decode_max_pixels is refused from its header; a killed film process answers an
error and the next film starts a new one). Over real sockets against `screener web`."""

from __future__ import annotations

import http.client
import json
import os
import re
import select
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import ServeProcess, film_dicom, free_port, kill_mid_call, serve_env, wait_for

from screener.db import Database
from screener.db.migrate import upgrade
from screener.ingest.accept import Acceptor
from screener.ingest.spool import Spool

HEADER_TIMEOUT = 5.0
PER_CLIENT = 16
#: loopback's 127.0.0.0/8 gives each party an address of its own, as on a network
READER, IDLER, TRICKLER = "127.0.0.1", "127.0.0.2", "127.0.0.3"
#: a film's pixel budget in these tests: 500 x 600 fits, 800 x 800 does not
MAX_PIXELS = 400_000


def _start_web(tmp_path: Path, db_url: str, **extra: str) -> tuple[int, ServeProcess]:
    db = Database(db_url)
    upgrade(db)
    db.dispose()
    port = free_port()
    env = serve_env(tmp_path, db_url, free_port(), screener_web_port=str(port), **extra)
    web = ServeProcess(tmp_path, env, command="web").start()

    def answers() -> bool:  # web_started is logged just before uvicorn listens
        try:
            return _get(port, "/static/screener.css")[0] == 200
        except OSError:
            return False

    wait_for(answers, 30)
    return port, web


def _get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One GET from READER on a new connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60, source_address=(READER, 0))
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _events(web: ServeProcess, event: str) -> list[dict[str, Any]]:
    lines = (json.loads(line) for line in web.log().splitlines() if line.startswith("{"))
    return [e for e in lines if e.get("event") == event]


class Watched:
    """Client sockets and when (after its connect) the server closed each one."""

    def __init__(self) -> None:
        self.opened: dict[socket.socket, float] = {}
        self.after: dict[socket.socket, float] = {}

    def connect(self, port: int, source: str) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
        self.opened[s] = time.monotonic()
        return s

    def poll(self) -> int:
        """Note the sockets the server has closed since; returns how many are closed."""
        open_ = [s for s in self.opened if s not in self.after]
        readable, _, _ = select.select(open_, [], [], 0.05) if open_ else ([], [], [])
        for s in readable:
            try:
                ended = s.recv(1024) == b""
            except OSError:
                ended = True
            if ended:
                self.after[s] = time.monotonic() - self.opened[s]
        return len(self.after)

    def close(self) -> None:
        for s in self.opened:
            s.close()


@pytest.fixture
def watched() -> Iterator[Watched]:
    sockets = Watched()
    yield sockets
    sockets.close()


def test_idle_sockets_do_not_lock_others_out_and_are_closed_after_the_header_timeout(
    tmp_path: Path, sqlite_url: str, watched: Watched
) -> None:
    """64 sockets from one address that never send a byte: 48 are closed at once (16 per
    client), requests from another address are answered 200 meanwhile (not 503), and the 16
    held, with a socket trickling a header line every half second, are closed once
    web.header_timeout_seconds have passed; each kind is logged once, not once a socket."""
    port, web = _start_web(
        tmp_path,
        sqlite_url,
        screener_web_header_timeout_seconds=str(HEADER_TIMEOUT),
        screener_web_max_connections_per_client=str(PER_CLIENT),
    )
    idle = [watched.connect(port, IDLER) for _ in range(64)]
    trickler = watched.connect(port, TRICKLER)
    trickler.sendall(b"GET /static/screener.css HTTP/1.1\r\nHost: screener\r\n")
    wait_for(lambda: watched.poll() >= 64 - PER_CLIENT, 30)

    for _ in range(5):
        status, body = _get(port, "/static/screener.css")
        assert status == 200 and body

    trickled = [time.monotonic()]

    def all_closed() -> bool:
        if trickler not in watched.after and time.monotonic() - trickled[-1] > 0.5:
            trickler.sendall(b"X-Slow: 1\r\n")  # never the blank line that ends the headers
            trickled.append(time.monotonic())
        return watched.poll() == len(watched.opened)

    wait_for(all_closed, 60)
    after = sorted(watched.after[s] for s in idle)
    assert all(t < HEADER_TIMEOUT for t in after[: 64 - PER_CLIENT]), after
    assert all(t >= HEADER_TIMEOUT - 0.1 for t in after[64 - PER_CLIENT :]), after
    assert watched.after[trickler] >= HEADER_TIMEOUT - 0.1 and len(trickled) >= 5
    assert _get(port, "/static/screener.css")[0] == 200

    refused = _events(web, "web_client_connection_limit")
    assert [(e["client"], e["times"], e["held"]) for e in refused] == [(IDLER, 1, PER_CLIENT)]
    timed_out = _events(web, "web_header_timeout")
    assert sorted(e["client"] for e in timed_out) == [IDLER, TRICKLER]
    assert web.terminate() == 0


@pytest.fixture
def films(
    tmp_path: Path, sqlite_url: str, make_settings: Callable[..., Any]
) -> Iterator[tuple[int, ServeProcess, dict[str, str]]]:
    """`screener web` behind a trusted proxy's user header, with a pixel budget of
    MAX_PIXELS, serving two films: "fits" (500 x 600) and "over" (800 x 800); yields the
    port, the process and each film's picture URL."""
    settings = make_settings(sqlite_url)
    db = Database(sqlite_url)
    upgrade(db)
    acceptor = Acceptor(db, Spool(settings.storage.spool_dir, 0), settings)
    urls = {}
    rng = np.random.default_rng(4)
    for name, shape in (("fits", (600, 500)), ("over", (800, 800))):
        film = film_dicom(rng.integers(0, 255, shape, dtype=np.uint8), accession=name)
        accepted = acceptor.accept(film, source="dicom")
        urls[name] = f"/study/{accepted.study_instance_uid}/image/{accepted.sop_instance_uid}.png"
    db.dispose()
    port, web = _start_web(
        tmp_path,
        sqlite_url,
        screener_web_trusted_user_header="X-Remote-User",
        screener_worker_decode_max_pixels=str(MAX_PIXELS),
    )
    try:
        yield port, web, urls
    finally:
        if web.proc is not None and web.proc.poll() is None:
            web.terminate()


def _alive(pid: int) -> bool:
    """The process runs (a zombie waiting to be reaped has ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def test_films_are_drawn_in_the_film_process_which_refuses_one_over_the_pixel_budget(
    films: tuple[int, ServeProcess, dict[str, str]],
) -> None:
    """A film within the budget is a PNG of the web's size from the film process (under
    worker.decode_memory_mb; TensorFlow's model process is not started); one whose header
    claims more than worker.decode_max_pixels answers 422 image_too_large with no more
    than the reason; the same process draws the next film; killed, the next film starts
    a new one; SIGTERM ends `screener web` and it."""
    port, web, urls = films
    user = {"X-Remote-User": "alice"}
    status, png = _get(port, urls["fits"], user)
    assert status == 200 and png.startswith(b"\x89PNG")
    assert _png_size(png) == (640, 768)  # 500 x 600 at the web's long side, 768

    started = _events(web, "web_film_process_started")
    assert len(started) == 1
    first = int(started[0]["pid"])
    limits = Path(f"/proc/{first}/limits").read_text()
    cap = re.search(r"Max address space\s+(\d+)", limits)
    assert cap and int(cap.group(1)) == 2048 << 20, limits  # worker.decode_memory_mb
    assert not _events(web, "web_model_process_started")

    status, answer = _get(port, urls["over"], user)
    assert (status, answer) == (422, b"the film cannot be shown: image_too_large")
    assert _get(port, urls["fits"], user)[0] == 200
    assert len(_events(web, "web_film_process_started")) == 1 and _alive(first)

    os.kill(first, signal.SIGKILL)
    wait_for(lambda: not _alive(first), 30)
    status, png = _get(port, urls["fits"], user)
    assert status == 200 and png.startswith(b"\x89PNG")
    second = int(_events(web, "web_film_process_started")[-1]["pid"])
    assert second != first and _alive(second)
    assert web.terminate() == 0
    wait_for(lambda: not _alive(second), 30)


def _png_size(png: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def test_the_film_process_killed_mid_film_answers_an_error_and_the_next_film_works(
    tmp_path: Path, make_settings: Callable[..., Any]
) -> None:
    """The film process killed in the middle of a picture (here: blocked reading a FIFO no
    one writes) answers that call `decoder_crashed`, a failure of the process (HTTP 503),
    not of the film; the next film starts a new film process and is drawn; the model
    process was never started; stop() ends the film process."""
    from screener.web.modelwork import ModelWork

    film = tmp_path / "film.dcm"
    film.write_bytes(film_dicom(np.full((600, 500), 90, dtype=np.uint8)))
    work = ModelWork(make_settings(), film_timeout=120)
    first, failures = kill_mid_call(
        work, "film_png", tmp_path / "never-written", lambda: work.film_pid
    )
    assert [(f.reason, f.unavailable) for f in failures] == [("decoder_crashed", True)]

    png = work.call("film_png", str(film))
    assert png.startswith(b"\x89PNG") and _png_size(png) == (640, 768)
    second = work.film_pid
    assert second is not None and second != first and _alive(second)
    assert work.pid is None  # the model process: not started for films
    work.stop()
    assert not _alive(second)
