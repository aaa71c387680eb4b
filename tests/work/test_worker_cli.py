"""``screener worker --once`` is built by the same compose_worker as serve's workers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select
from support import build_dicom, free_port, run_screener, serve_env

from screener.db import Export, Job, JobState, Result


def test_worker_once_scores_and_plans_the_sr_delivery(
    tmp_path: Path, make_settings: Callable[..., Any], sqlite_url: str, model_bundle: Path
) -> None:
    """One batch through `screener worker --once`: the film is scored and, with a destination
    configured, its SR delivery is planned (it used to be scored and never sent)."""
    from screener.serve.daemon import compose

    settings = make_settings(
        sqlite_url, listener__enabled=False, watch__enabled=False, worker__enabled=False
    )
    daemon = compose(settings)
    data = build_dicom(rows=256, columns=256)
    assert daemon.acceptor.accept(data, source="folder").outcome == "queued"
    env = serve_env(
        tmp_path,
        sqlite_url,
        free_port(),
        SCREENER_EXPORT_DESTINATIONS=f"PACS@127.0.0.1:{free_port()}",
        SCREENER_MODEL_BUNDLE=str(model_bundle),
    )
    out = run_screener(env, tmp_path, "worker", "--once")
    assert out.returncode == 0, out.stderr
    assert "processed 1 job(s)" in out.stdout
    with daemon.db.transaction() as session:
        assert session.scalars(select(Job.state)).all() == [JobState.DONE]
        result = session.scalars(select(Result)).one()
        exports = session.scalars(select(Export)).all()
        assert [(e.result_id, e.destination, e.state) for e in exports] == [
            (result.id, exports[0].destination, "pending")
        ]
        assert exports[0].destination.startswith("PACS@127.0.0.1:")
    daemon.stop()
