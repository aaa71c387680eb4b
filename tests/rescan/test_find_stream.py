"""A rescan's C-FIND answer is processed as a stream: the memory it takes does not grow with
the number of studies the PACS answers (a year of a hospital: 100,000; here 2,000 and 8,000
from a pynetdicom C-FIND SCP in its own process, tests/rescan/find_scp.py)."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from datetime import datetime, timedelta
from itertools import islice
from pathlib import Path

import pytest
from support import free_port, wait_for

from screener.rescan.query import PacsClient, parse_pacs
from screener.rescan.run import FIND_CHUNK

pytestmark = pytest.mark.slow

SCP = Path(__file__).with_name("find_scp.py")


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _client(n: int) -> Iterator[PacsClient]:
    port = free_port()
    scp = subprocess.Popen([sys.executable, str(SCP), str(port), str(n)])
    try:
        wait_for(lambda: _listening(port) or scp.poll() is not None, timeout=60)
        assert scp.poll() is None, "the C-FIND SCP did not start"
        yield PacsClient(parse_pacs(f"PACS@127.0.0.1:{port}"), "SCREENER", 120)
    finally:
        scp.terminate()
        scp.wait(30)


def _streamed_peak(n: int) -> tuple[int, int]:
    """Studies seen and the peak of traced memory (bytes) while taking an answer of ``n``
    studies as the rescan does: FIND_CHUNK at a time."""
    now = datetime.now()
    for client in _client(n):
        tracemalloc.start()
        try:
            studies = client.iter_studies(now - timedelta(days=1), now, ["CR"])
            seen = 0
            while chunk := list(islice(studies, FIND_CHUNK)):
                seen += len(chunk)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    return seen, peak


@pytest.mark.timeout(300)
def test_a_c_find_answer_is_taken_in_memory_that_does_not_grow_with_it() -> None:
    """Four times the studies take no more memory, within 25 % and 256 KiB (gathered in a
    list they would take over 2 MB more: about 550 bytes a study)."""
    small, small_peak = _streamed_peak(2000)
    large, large_peak = _streamed_peak(8000)
    assert (small, large) == (2000, 8000)
    assert large_peak < small_peak * 1.25 + 256 * 1024, (small_peak, large_peak)
