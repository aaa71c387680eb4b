"""A decode process that dies takes only its culprit down: the films that shared its
batches are decoded again alone, in the same attempt, and scored."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from crashing_decode import MARK, decode_or_die
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select
from support import wait_for

from screener.db import Instance, Job, JobState, Result
from screener.work.scoring import ModelProcessor

pytestmark = pytest.mark.slow


def _film(source: Path, marked: bool = False) -> tuple[bytes, str]:
    import io

    ds = dcmread(source)
    ds.SOPInstanceUID = generate_uid()
    if marked:
        ds.ImageComments = MARK.decode()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue(), str(ds.SOPInstanceUID)


def test_decoder_crash_fails_only_its_culprit(
    db_url: str, make_settings: Callable[..., Any], model_bundle: Path, dicom_dir: Path
) -> None:
    """Ten films around one that kills the decoder (twice) are all scored on their first
    attempt; the culprit alone is failed as decoder_crashed, its SOP Instance UID named."""
    from screener.serve.daemon import compose
    from screener.serve.workers import compose_worker

    settings = make_settings(
        db_url,
        listener__enabled=False,
        watch__enabled=False,
        worker__enabled=False,
        worker__max_batch=4,
        worker__decode_processes=1,
        model__bundle=str(model_bundle),
    )
    daemon = compose(settings)
    sources = sorted((dicom_dir / "siim_chest_cr").glob("*.dcm"))
    films = [_film(source) for source in sources]
    crasher, crasher_uid = _film(sources[0], marked=True)
    films.insert(5, (crasher, crasher_uid))  # in the second batch of four; the third is
    for data, _uid in films:  # prepared on the same pool while the second decodes
        assert daemon.acceptor.accept(data, source="folder").outcome == "queued"
    worker = compose_worker(
        settings, processor=ModelProcessor(settings, decode=decode_or_die), db=daemon.db
    )
    worker.start()
    try:

        def finished() -> bool:
            with daemon.db.transaction() as s:
                states = [j.state for j in s.scalars(select(Job))]
            return all(state in (JobState.DONE, JobState.FAILED) for state in states)

        wait_for(finished, timeout=300, interval=0.2)
    finally:
        worker.stop()
        daemon.stop()
    with daemon.db.transaction() as s:
        rows = s.execute(
            select(
                Instance.sop_instance_uid, Job.state, Job.reason, Job.attempts, Job.last_error
            ).join(Job, Job.instance_id == Instance.id)
        ).all()
        scored = {
            uid
            for (uid,) in s.execute(
                select(Instance.sop_instance_uid).join(Result, Result.instance_id == Instance.id)
            )
        }
    by_uid = {uid: (state, reason, attempts, error) for uid, state, reason, attempts, error in rows}
    state, reason, attempts, error = by_uid.pop(crasher_uid)
    assert (state, reason, attempts) == (JobState.FAILED, "decoder_crashed", 1)
    assert error is not None and crasher_uid in error
    assert len(by_uid) == 10
    for uid, (state, reason, attempts, _error) in by_uid.items():
        assert (state, reason, attempts) == (JobState.DONE, None, 1), uid
    assert scored == set(by_uid)


@pytest.mark.parametrize(("cap_mb", "expected"), [(400, "decode_memory_limit"), (2048, None)])
def test_decode_over_the_memory_cap_fails_with_its_reason(
    tmp_path: Path, cap_mb: int, expected: str | None
) -> None:
    """A film whose decoding needs more than worker.decode_memory_mb fails as
    decode_memory_limit in its decode process, which lives on; under the default cap it decodes."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    import numpy as np
    from support import build_dicom

    from screener.config import LoggingSettings
    from screener.imaging.limits import DecodeLimits
    from screener.work.scoring import DecodeFailure, decode_spooled, init_decode_process

    film = tmp_path / "large.dcm"
    film.write_bytes(build_dicom(rows=6000, columns=6000))  # 36 Mpx of 16 bits: 72 MB
    small = tmp_path / "small.dcm"
    small.write_bytes(build_dicom(rows=256, columns=256))
    with ProcessPoolExecutor(
        1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=init_decode_process,
        initargs=(LoggingSettings(), DecodeLimits(10**9, cap_mb), os.getpid()),
    ) as pool:
        result = pool.submit(decode_spooled, str(film)).result()
        after = pool.submit(decode_spooled, str(small)).result()  # the same process lives on
    if expected is None:
        assert isinstance(result, list) and result[0].shape == (224, 224)
    else:
        assert isinstance(result, DecodeFailure) and result.reason == expected
        assert f"{cap_mb} MB" in result.message
    assert isinstance(after, list) and after[0].dtype == np.uint8
