"""A C-FIND SCP that answers every Study Root STUDY-level query with ``N`` studies of today
(ModalitiesInStudy CR), run as its own process: ``python find_scp.py PORT N``. The peer of
tests/rescan/test_find_stream.py and benchmarks/bench_rescan_find.py."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import date
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, evt

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"


def answers(n: int) -> Iterator[tuple[int, Dataset | None]]:
    today = f"{date.today():%Y%m%d}"
    for i in range(n):
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        ds.StudyInstanceUID = f"1.2.826.0.1.3680043.10.2425.{i}"
        ds.StudyDate, ds.StudyTime = today, "000001"
        ds.AccessionNumber = f"A{i:08d}"
        ds.ModalitiesInStudy = "CR"
        yield 0xFF00, ds


def main() -> None:
    port, n = int(sys.argv[1]), int(sys.argv[2])

    def on_find(event: Any) -> Iterator[tuple[int, Dataset | None]]:
        yield from answers(n)

    ae = AE(ae_title="PACS")
    ae.add_supported_context(STUDY_ROOT_FIND)
    ae.network_timeout = ae.dimse_timeout = 600
    ae.start_server(("127.0.0.1", port), evt_handlers=[(evt.EVT_C_FIND, on_find)])


if __name__ == "__main__":
    main()
