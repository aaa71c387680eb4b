"""The web worklist under a cheap attack: a static file's latency alone, and while clients
guess passwords and sockets sit idle.

    .venv/bin/python benchmarks/bench_web.py [--requests 200] [--guessers 8] [--idle 64]

Starts ``screener web`` on a free port with a temporary SQLite database and one user made
with ``screener web-password``, then times ``GET /static/screener.css``, each on a new
connection from 127.0.0.1 (a browser's fresh tab), and prints the median, p95 and max and
every status that was not 200:

1. alone;
2. while ``--guessers`` clients (from 127.0.0.3) post wrong passwords to ``/login`` in a loop;
3. while ``--idle`` sockets (from 127.0.0.2) are held open without sending a byte, each one
   the server closes opened again at once (an attacker reconnects);
4. under both at once.

Loopback's 127.0.0.0/8 gives the three parties their own addresses, as on a network: the
web's limits are per client address. Goal: static under 50 ms (p95) under that load.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "correct horse battery"
STATIC = "/static/screener.css"
ATTACKER_IDLE, ATTACKER_GUESS, READER = "127.0.0.2", "127.0.0.3", "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait(predicate, timeout: float, interval: float = 0.05):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"not done within {timeout} s")


def screener(env: dict[str, str], cwd: Path, *args: str, stdin: str | None = None) -> str:
    return subprocess.run(
        [sys.executable, "-m", "screener.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env},
        cwd=cwd,
    ).stdout


def get(port: int, path: str, source: str = READER) -> tuple[int, float]:
    """One GET on a new connection: its status (0: refused or closed) and seconds taken."""
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source, 0))
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        status = response.status
    except OSError:
        status = 0
    finally:
        conn.close()
    return status, time.perf_counter() - start


def latency(port: int, n: int, limit: float = 60.0) -> tuple[list[float], Counter[int]]:
    """``n`` timed GETs of the static file, or as many as ``limit`` seconds allow."""
    seconds, statuses = [], Counter[int]()
    deadline = time.monotonic() + limit
    for _ in range(n):
        if time.monotonic() > deadline:
            break
        status, took = get(port, STATIC)
        statuses[status] += 1
        seconds.append(took)
    return seconds, statuses


def show(label: str, seconds: list[float], statuses: Counter[int]) -> None:
    ms = sorted(s * 1000 for s in seconds)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    other = {k: v for k, v in statuses.items() if k != 200}
    print(
        f"{label:<34} median {statistics.median(ms):7.1f} ms   p95 {p95:7.1f} ms   "
        f"max {ms[-1]:7.1f} ms   200: {statuses[200]}/{len(ms)} requests"
        + (f"   other: {other}" if other else "")
    )


class Guesser(threading.Thread):
    """A client posting wrong passwords to /login on one keep-alive connection (a new one
    whenever the server closes it)."""

    def __init__(self, port: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port, self.stop = port, stop
        self.statuses: Counter[int] = Counter()

    def _session(self) -> tuple[http.client.HTTPConnection, str, str]:
        conn = http.client.HTTPConnection(
            "127.0.0.1", self.port, timeout=60, source_address=(ATTACKER_GUESS, 0)
        )
        conn.request("GET", "/login")
        response = conn.getresponse()
        page = response.read().decode()
        token = re.search(r'name="csrf" value="([^"]+)"', page)
        cookie = (response.getheader("set-cookie") or "").split(";")[0]
        return conn, cookie, token.group(1) if token else ""

    def run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn, cookie, token = self._session()
                body = f"csrf={token}&username=alice&password=guess{os.urandom(4).hex()}"
                conn.request(
                    "POST",
                    "/login",
                    body=body,
                    headers={
                        "Content-Type": "application/x-www-form-urlencoded",
                        "Cookie": cookie,
                    },
                )
                response = conn.getresponse()
                response.read()
                self.statuses[response.status] += 1
                if response.will_close:
                    conn.close()
                    conn = None
            except OSError:
                self.statuses[0] += 1
                if conn is not None:
                    conn.close()
                conn = None
                self.stop.wait(0.05)
        if conn is not None:
            conn.close()


class IdleSockets(threading.Thread):
    """``n`` connections that never send a byte; each one the server closes is counted and
    opened again."""

    def __init__(self, port: int, n: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port, self.n, self.stop = port, n, stop
        self.opened = self.closed_by_server = 0
        self.held: list[socket.socket] = []

    def _open(self) -> None:
        s = socket.socket()
        s.setblocking(True)
        s.settimeout(5)
        s.bind((ATTACKER_IDLE, 0))
        try:
            s.connect(("127.0.0.1", self.port))
        except OSError:
            s.close()
            return
        s.setblocking(False)
        self.held.append(s)
        self.opened += 1

    def _closed(self, s: socket.socket) -> bool:
        try:
            return s.recv(1) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def run(self) -> None:
        while not self.stop.is_set():
            for s in [s for s in self.held if self._closed(s)]:
                s.close()
                self.held.remove(s)
                self.closed_by_server += 1
            while len(self.held) < self.n and not self.stop.is_set():
                self._open()
            self.stop.wait(0.05)
        for s in self.held:
            s.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="static requests per phase")
    parser.add_argument("--guessers", type=int, default=8, help="clients guessing passwords")
    parser.add_argument("--idle", type=int, default=64, help="idle sockets held open")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds of attack first")
    parser.add_argument(
        "--phase-seconds", type=float, default=60.0, help="most seconds of timing per phase"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-web-") as tmp:
        folder = Path(tmp)
        (folder / "none.toml").write_text("")
        port = free_port()
        env = {
            "SCREENER_CONFIG": str(folder / "none.toml"),
            "SCREENER_DATABASE_URL": f"sqlite:///{folder / 'screener.db'}",
            "SCREENER_STORAGE_SPOOL_DIR": str(folder / "spool"),
            "SCREENER_LOGGING_FORMAT": "json",
            "SCREENER_LOGGING_LEVEL": "error",  # the guesses' warnings would only cost time
        }
        user = screener(env, folder, "web-password", "alice", "--stdin", stdin=PASSWORD + "\n")
        env["SCREENER_WEB_USERS"] = f'["{user.strip()}"]'
        screener(env, folder, "db", "upgrade")
        with open(folder / "web.log", "wb") as log:
            web = subprocess.Popen(
                [sys.executable, "-m", "screener.cli", "web", "--port", str(port)],
                env={**os.environ, **env},
                cwd=folder,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait(lambda: _answers(port) or web.poll() is not None, 60)
            if web.poll() is not None:
                print((folder / "web.log").read_text(), file=sys.stderr)
                return 1
            print(f"screener web on 127.0.0.1:{port}; {args.requests} GET {STATIC} per phase")
            latency(port, 20)  # warm-up
            show("alone", *latency(port, args.requests))

            for guessing, idling in (
                (args.guessers, 0),
                (0, args.idle),
                (args.guessers, args.idle),
            ):
                attack(port, args, guessing, idling)
        finally:
            web.terminate()
            web.wait(60)
    return 0


def attack(port: int, args: argparse.Namespace, guessing: int, idling: int) -> None:
    """Time the static file while ``guessing`` clients guess and ``idling`` sockets idle."""
    stop = threading.Event()
    idle = IdleSockets(port, idling, stop)
    guessers = [Guesser(port, stop) for _ in range(guessing)]
    idle.start()
    for g in guessers:
        g.start()
    time.sleep(args.settle)  # the attack under way before the clock runs
    started = time.monotonic()
    guessed_before = sum(sum(g.statuses.values()) for g in guessers)
    seconds, statuses = latency(port, args.requests, args.phase_seconds)
    took = time.monotonic() - started
    guessed = sum(sum(g.statuses.values()) for g in guessers) - guessed_before
    show(f"{guessing} guessing, {idling} idle", seconds, statuses)
    stop.set()
    for g in guessers:
        g.join(30)
    idle.join(30)
    answers = sum((g.statuses for g in guessers), Counter[int]())
    print(
        f"  guesses answered: {guessed / took:.1f}/s during the timing, statuses over the "
        f"whole attack: {dict(answers)}; idle sockets: {idle.opened} opened, "
        f"{idle.closed_by_server} closed by the server"
    )


def _answers(port: int) -> bool:
    try:
        return get(port, STATIC)[0] == 200
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
