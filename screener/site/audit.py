"""Audit reads against verification bias.

Flagged studies are read first, so the normals the model did not flag are seldom read, and
figures computed from the reads alone flatter the model's sensitivity and distort its
specificity (verification bias; Begg & Greenes, Biometrics 1983). The remedy is a random
sample of the unflagged studies, read like the rest, each read then weighted by the inverse
of the probability that its study was chosen for reading (Horvitz-Thompson).

When a study is first scored, a number ``u`` in [0, 1) is drawn for it: HMAC-SHA256 of its
Study Instance UID keyed with ``site.audit_seed`` (empty: this database's installation id),
so the draw is random to a reader yet reproducible. It is kept in ``audit_draws`` with the
``site.audit_share`` in force. The study is an *audit study* when the model does not flag it
and ``u < share``: the worklist lists it right after the flagged ones, marked AUDIT READ.

The weight of a read (:func:`read_weight`): 1 for a study the model flagged (every flagged
study is meant to be read); ``1 / share`` for an audit study; 0 for an unflagged study that
was not drawn (read for some reason of its own: it stands for no one but itself, and is left
out of the weighted figures, though counted).
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from screener.db.models import AuditDraw, Installation, Instance, Study


def draw_u(seed: str, study_instance_uid: str) -> float:
    """The study's draw: the first 8 bytes of HMAC-SHA256(seed, UID) as a fraction of 2^64."""
    digest = hmac.new(seed.encode(), study_instance_uid.encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def seed_of(session: Session, configured: str) -> str:
    """``site.audit_seed``, else this database's installation id (a random UUID)."""
    if configured:
        return configured
    installation = session.scalars(select(Installation.id)).first()
    return str(installation or "screener")


def draw_for(
    session: Session, instance_id: int, share: float, seed: str, at: datetime
) -> AuditDraw | None:
    """The study of ``instance_id`` drawn once, when it is first scored (None: drawn before)."""
    study_id, uid = session.execute(
        select(Study.id, Study.study_instance_uid)
        .join(Instance, Instance.study_id == Study.id)
        .where(Instance.id == instance_id)
    ).one()
    pending = any(isinstance(o, AuditDraw) and o.study_id == study_id for o in session.new)
    with session.no_autoflush:
        if pending or session.get(AuditDraw, study_id) is not None:
            return None
    draw = AuditDraw(study_id=study_id, u=draw_u(seed, uid), share=share, drawn_at=at)
    session.add(draw)
    return draw


def read_weight(model_positive: bool, draw: AuditDraw | None) -> float:
    """A read's Horvitz-Thompson weight: 1 / the chance its study was chosen for reading."""
    if model_positive:
        return 1.0
    if draw is not None and draw.share > 0 and draw.u < draw.share:
        return 1.0 / draw.share
    return 0.0


def weighted_proportion(
    hits: list[bool], weights: list[float]
) -> tuple[float | None, tuple[float, float] | None, float]:
    """A weighted proportion, its 95 % Wilson interval over Kish's effective sample size
    ((sum w)^2 / sum w^2: what the weights leave of the reads' information), and that size."""
    from screener.model.metrics import wilson_interval

    total = sum(weights)
    if total <= 0:
        return None, None, 0.0
    p = sum(w for hit, w in zip(hits, weights, strict=True) if hit) / total
    n_eff = total**2 / sum(w * w for w in weights)
    return p, wilson_interval(p * n_eff, n_eff), n_eff
