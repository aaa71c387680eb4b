"""Workers score with the shipped model: decode pool + one model call per batch, results with the job."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from screener.db import Job, JobState, Result
from screener.model.bundle import read_metadata
from screener.work.scoring import ModelProcessor
from screener.work.worker import JobDone, Worker


@pytest.fixture
def scoring_setup(make_settings: Callable[..., Any], model_bundle: Path, dicom_dir: Path) -> Any:
    """A daemon (no listener/watcher) with 3 chest films and one undecodable JPLY film queued."""
    from screener.serve.daemon import compose

    settings = make_settings(
        listener__enabled=False,
        watch__enabled=False,
        worker__enabled=False,
        worker__max_batch=2,
        model__bundle=str(model_bundle),
        selection__body_parts="CHEST,HIP",  # let the WG04 hip film through to the decoder
    )
    daemon = compose(settings)
    files = sorted((dicom_dir / "siim_chest_cr").glob("*.dcm"))[:3]
    files.append(dicom_dir / "wg04_nonchest" / "RG2_JPLY.dcm")
    for f in files:
        assert daemon.acceptor.accept(f.read_bytes(), source="folder").outcome == "queued"
    yield settings, daemon
    daemon.stop()


def test_worker_scores_batches_and_records_results(scoring_setup: Any, model_bundle: Path) -> None:
    """Every decodable film gets one result named by the bundle; the JPLY film fails with its reason, not the batch."""
    settings, daemon = scoring_setup
    meta = read_metadata(model_bundle)
    processor = ModelProcessor(settings)
    worker = Worker(daemon.db, settings, processor)
    worker.start()  # pipelined loop: 4 jobs in batches of 2
    try:
        from support import wait_for

        def finished() -> bool:
            with daemon.db.transaction() as s:
                return all(j.state in ("done", "failed") for j in s.scalars(select(Job)))

        wait_for(finished, timeout=180, interval=0.2)
    finally:
        worker.stop()
    with daemon.db.transaction() as s:
        jobs = {j.id: j for j in s.scalars(select(Job))}
        results = s.scalars(select(Result)).all()
        assert sorted(j.state for j in jobs.values()) == ["done", "done", "done", "failed"]
        failed = next(j for j in jobs.values() if j.state == JobState.FAILED)
        assert failed.reason == "undecodable_pixel_data" and failed.attempts == 1
        assert "JPEG Extended" in (failed.last_error or "")
        assert len(results) == 3
        for r in results:
            assert jobs[r.job_id].state == JobState.DONE
            assert 0.0 <= r.probability <= 1.0
            assert r.domain_score is not None  # the shipped bundle has a domain guard
            guard = meta["domain_guard"]["threshold"]
            expected = "pneumonia" if r.probability >= meta["threshold"] else "normal"
            assert r.label == (expected if r.domain_score <= guard else "outside_domain")
            assert (r.model_uid, r.model_version, r.threshold) == (
                meta["uid"],
                meta["version"],
                meta["threshold"],
            )
            assert r.queued_at <= r.started_at <= r.scored_at


def test_inline_and_pooled_decoding_agree(scoring_setup: Any) -> None:
    """Decoding in the pool and inline give the same probabilities."""
    from dataclasses import replace

    settings, daemon = scoring_setup
    pooled = ModelProcessor(settings)
    inline = ModelProcessor(
        replace(settings, worker=replace(settings.worker, decode_processes=0)), bundle=pooled.bundle
    )
    w = Worker(daemon.db, settings, pooled)
    batch = w.take_batch()
    try:
        a = pooled.finish(batch, pooled.prepare(batch))
        b = inline.finish(batch, inline.prepare(batch))
    finally:
        pooled.close()
    assert [type(x) for x in a] == [type(x) for x in b]
    assert inline.pool is None
    scores_a = [o.record.keywords["scores"] for o in a if isinstance(o, JobDone)]  # type: ignore[union-attr]
    scores_b = [o.record.keywords["scores"] for o in b if isinstance(o, JobDone)]  # type: ignore[union-attr]
    assert len(scores_a) == 2 and scores_a == scores_b


def test_inference_threads_caps_tensorflow(tmp_path: Path) -> None:
    """worker.inference_threads = 1 sets both of TensorFlow's thread pools to 1 (in a fresh process, as a worker would)."""
    import subprocess
    import sys

    code = (
        "from screener.model.runtime import limit_threads\n"
        "limit_threads(1)\n"
        "import tensorflow as tf\n"
        "print(tf.config.threading.get_intra_op_parallelism_threads(),"
        " tf.config.threading.get_inter_op_parallelism_threads())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-2:] == ["1", "1"]
