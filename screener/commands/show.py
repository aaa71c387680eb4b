"""``screener show STUDY``: a study's images, results, deliveries and reads."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from screener.commands import format_age, setting_flag
from screener.config import Settings


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "show", help="one study: results per image, deliveries, reads"
    )
    setting_flag(p, "--db", "database.url", "database URL")
    p.add_argument(
        "study",
        help="the study: #N (short id from the worklist), accession number, Study Instance UID "
        "or a unique start or end of it",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--heatmap", type=Path, help="write a Grad-CAM overlay of the highest-scoring image"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from screener.db.migrate import open_database
    from screener.views.worklist import study_detail

    db = open_database(settings.database.url)
    try:
        detail = study_detail(db, args.study, settings.worklist.aging_hours)
        if args.heatmap:
            _heatmap(db, detail.study_instance_uid, args.heatmap, settings)
    finally:
        db.dispose()
    if args.json:
        print(json.dumps(detail.as_dict(), indent=2))
        return 0
    s = detail.score
    print(f"study      #{detail.short_id}  {detail.study_instance_uid}")
    print(
        f"accession  {detail.accession_number or '-'}   date {detail.study_date or '-'}   "
        f"images {len(detail.images)}"
    )
    if s and s.reopened:
        print("status     REOPENED: read before, but a newer result changed the flag")
    if s:
        flag = "SECOND READ RECOMMENDED" if s.flagged else "not flagged"
        if s.assessment == "outside_domain":
            print(
                "score      none: NOT ASSESSED, the images are outside the model's domain "
                f"(unlike its training films); waiting {format_age(s.age_hours)}"
            )
        else:
            note = " (some images outside the model's domain)" if s.assessment != "assessed" else ""
            print(
                f"score      {s.probability:.3f} (threshold {s.threshold:.3f}) {flag}{note}; "
                f"waiting {format_age(s.age_hours)}"
            )
        print(f"model      {s.model_name} {s.model_version} ({s.model_uid})")
    for image in detail.images:
        top = (
            " <- sets the study's score"
            if s and image.sop_instance_uid == s.top_sop_instance_uid
            else ""
        )
        print(
            f"image      {image.sop_instance_uid} {image.modality or ''} {image.view_position or ''} job={image.job_state}{' (' + image.job_reason + ')' if image.job_reason else ''}{top}"
        )
        if image.purged_at:
            print(f"  image file deleted by retention {image.purged_at[:19]} (results kept)")
        for r in image.results:
            domain = "" if r["domain_score"] is None else f" domain score {r['domain_score']:.1f}"
            print(
                f"  frame {r['frame']}: p={r['probability']:.3f} {r['label']}{domain} "
                f"by {r['model']}"
            )
            for d in r["deliveries"]:
                err = f" last error: {d['last_error']}" if d["last_error"] else ""
                print(
                    f"    SR to {d['destination']}: {d['state']} after {d['attempts']} attempt(s){err}"
                )
    for rv in detail.reviews:
        print(
            f"read       {rv['at'][:19]} {rv['verdict']} by {rv['reader'] or 'unknown'} (p={rv['probability']:.3f}, model {rv['model_version']}){': ' + rv['note'] if rv['note'] else ''}"
        )
    if args.heatmap:
        print(f"heatmap    {args.heatmap}")
    return 0


def _heatmap(db: Any, study_uid: str, out: Path, settings: Settings) -> None:
    from sqlalchemy import select

    from screener.db import OUTSIDE_DOMAIN, Instance, Result, Study
    from screener.errors import ScreenerError
    from screener.imaging import load_image
    from screener.model.gradcam import display_frames, write_heatmap
    from screener.model.opening import open_model

    with db.transaction() as session:
        row = session.execute(
            select(
                Instance.spool_path,
                Instance.purged_at,
                Instance.sop_instance_uid,
                Result.frame_number,
                Result.probability,
                Result.threshold,
                Result.label,
            )
            .join(Result, Result.instance_id == Instance.id)
            .join(Study, Study.id == Instance.study_id)
            .where(Study.study_instance_uid == study_uid)
            .order_by(Result.probability.desc())
        ).first()
    if row is None:
        raise SystemExit("no scored image in this study to explain")
    if row.purged_at is not None:
        raise ScreenerError(
            f"no heatmap: the image was deleted from the spool on {row.purged_at:%Y-%m-%d} by "
            f"retention (storage.retention_days = {settings.storage.retention_days:g}); its "
            "results are kept; retrieve the study from PACS to look at it"
        )
    if not Path(row.spool_path).is_file():
        raise ScreenerError("no heatmap: the spooled image is missing (deleted outside screener)")
    image = load_image(row.spool_path)[row.frame_number - 1]
    bundle = open_model(settings)
    write_heatmap(
        bundle,
        image,
        out,
        display=display_frames(row.spool_path)[row.frame_number - 1],
        probability=row.probability,
        threshold=row.threshold,
        assessed=row.label != OUTSIDE_DOMAIN,
        label=f"image …{row.sop_instance_uid[-18:]} frame {row.frame_number}",
    )
