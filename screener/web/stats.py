"""The stats page (``screener stats`` per model version, with the ROC and a calibration plot
of the reads) and the commissioning page (``screener commission``'s candidate table,
recommendation and the site's weighted ROC and calibration pictures). Figures and pictures
are made in worker threads."""

from __future__ import annotations

import io
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from screener.config import Settings
from screener.db import Database
from screener.site.mode import go_live_record
from screener.views.wording import weighted_line
from screener.web.context import page, state_of


async def stats_page(request: Request, user: str) -> Response:
    from screener.model.metrics import brier, expected_calibration_error, roc_auc
    from screener.views.worklist import review_curves, review_stats

    web = state_of(request)
    stats = await run_in_threadpool(review_stats, web.db)
    curves = await run_in_threadpool(review_curves, web.db, web.aging)
    drawn = {}
    for uid, (labels, probs, _flags) in curves.items():
        both = 0 < sum(labels) < len(labels)
        drawn[uid] = {
            "n": len(labels),
            "positives": sum(labels),
            "auc": roc_auc(labels, probs) if both else None,
            "brier": brier(labels, probs),
            "ece": expected_calibration_error(labels, probs),
            "roc": both,
        }
    went_live = await run_in_threadpool(go_live_record, web.db)
    return page(
        request,
        "stats.html",
        stats=stats,
        drawn=drawn,
        weighted_line=weighted_line,
        went_live=went_live,
    )


async def stats_picture(request: Request, user: str) -> Response:
    from screener.views.worklist import read_model_name, review_curves

    web = state_of(request)
    uid, what = request.path_params["uid"], request.path_params["what"]
    curves = await run_in_threadpool(review_curves, web.db, web.aging)
    if uid not in curves or what not in ("roc", "calibration"):
        return PlainTextResponse("no reads of that model", status_code=404)
    labels, probs, flags = curves[uid]
    if what == "roc" and not 0 < sum(labels) < len(labels):
        return PlainTextResponse("a ROC needs reads of both kinds", status_code=404)
    name = await run_in_threadpool(read_model_name, web.db, uid) or "model"
    png = await run_in_threadpool(_stats_png, what, labels, probs, flags, name)
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})


async def commission_page(request: Request, user: str) -> Response:
    web = state_of(request)
    view = await run_in_threadpool(_commission_view, web.db, web.settings)
    return page(request, "commission.html", **view)


async def commission_picture(request: Request, user: str) -> Response:
    web = state_of(request)
    what = request.path_params["what"]
    if what not in ("roc", "calibration"):
        return PlainTextResponse("no such picture", status_code=404)
    png = await run_in_threadpool(_commission_png, web.db, web.settings, what)
    if png is None:
        return PlainTextResponse("no reads of both kinds yet", status_code=404)
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})


def _commission_view(db: Database, settings: Settings) -> dict[str, Any]:
    """What the commissioning page shows: ``screener commission``'s figures for the bundle
    in use (its own target; calibration refitted, as the command does by default)."""
    from screener.model.bundle import read_metadata
    from screener.model.commission import RECOMMENDED, RULES, WHY
    from screener.views.commissioning import figures, shortfalls, site_reads

    meta = read_metadata(settings.model.bundle)
    target = float(meta.get("target_sensitivity", 0.95))
    reads = site_reads(db, meta, settings.worklist.aging_hours)
    positives = sum(reads.positives)
    both = 0 < positives < len(reads.positives)
    return {
        "meta": meta,
        "target": target,
        "reads": reads,
        "positives": positives,
        "audited": sum(reads.audited),
        "short": shortfalls(reads, target, refit=True),
        "c": figures(reads, meta, target, refit=True) if both else None,
        "recommended": RULES[RECOMMENDED][0],
        "why": WHY,
    }


def _commission_png(db: Database, settings: Settings, what: str) -> bytes | None:
    """The commissioning page's ROC or calibration picture; None without reads of both kinds."""
    from screener.model.plots import plot_commission

    c = _commission_view(db, settings)["c"]
    if c is None:
        return None
    roc, calibration = io.BytesIO(), io.BytesIO()
    plot_commission(c, roc, calibration)
    return (roc if what == "roc" else calibration).getvalue()


#: Reads beyond which the stats page's ROC draws its curve and bootstraps its interval on a
#: random sample of this many (fixed seed; the AUC in the title is over every read, and the
#: title says so): a year's 50,000 reads would take minutes of bootstrap per picture.
ROC_SAMPLE = 1_000
#: Bootstrap resamples of the sampled ROC's interval (2,000 otherwise)
SAMPLED_BOOT = 500


def _roc_sample(labels: list[int], probs: list[float]) -> tuple[list[int], list[float]]:
    """At most :data:`ROC_SAMPLE` reads drawn without replacement (seed 0), of both kinds
    where both were read; all of them when there are no more."""
    import numpy as np

    if len(labels) <= ROC_SAMPLE:
        return labels, probs
    y = np.asarray(labels)
    rng = np.random.default_rng(0)
    # each kind keeps its share of the sample, at least one read of each
    take = []
    for kind in (1, 0):
        idx = np.flatnonzero(y == kind)
        n = max(1, round(ROC_SAMPLE * len(idx) / len(y))) if len(idx) else 0
        take.append(rng.choice(idx, size=min(n, len(idx)), replace=False))
    chosen = np.sort(np.concatenate(take))
    return [labels[i] for i in chosen], [probs[i] for i in chosen]


def _stats_png(
    what: str, labels: list[int], probs: list[float], flags: list[bool], name: str
) -> bytes:
    """The ROC (with the point the model's flags made) or the calibration plot, as PNG. The
    ROC's curve and interval come from :func:`_roc_sample` where the reads are many."""
    from screener.model.metrics import bootstrap_auc_ci, roc_auc
    from screener.model.plots import plot_calibration, plot_roc

    out = io.BytesIO()
    if what == "roc":
        positives = [f for f, y in zip(flags, labels, strict=True) if y]
        negatives = [f for f, y in zip(flags, labels, strict=True) if not y]
        point = (sum(negatives) / len(negatives), sum(positives) / len(positives))
        drawn, drawn_p = _roc_sample(labels, probs)
        sampled = (
            ""
            if len(drawn) == len(labels)
            else f"\ncurve and 95 % interval ({SAMPLED_BOOT} resamples) from a random "
            f"{len(drawn):,} of the reads"
        )
        plot_roc(
            drawn,
            drawn_p,
            out,
            None,
            f"ROC against reads (n={len(labels)})\n{name}{sampled}",
            roc_auc(labels, probs),
            bootstrap_auc_ci(drawn, drawn_p, n_boot=2000 if not sampled else SAMPLED_BOOT),
            point=point,
            point_label="its flags",
        )
    else:
        plot_calibration(labels, probs, out, f"Calibration against reads\n{name}")
    return out.getvalue()
