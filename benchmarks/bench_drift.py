"""How often the drift alarm fires: on windows of validation films (false alarms) and on
windows of shifted films (detections), with the shipped bundle and its thresholds rule.

The validation split's patients are halved (seeded): the reference and its thresholds come
from half A, exactly as ``screener reference`` and the monitor make them from the whole
split; windows are drawn from half B (films like the reference's, never in it) and from two
shifts: the ``NORMAL2-IM`` family's films outside the validation split (all normal: the
shift-proxy family, a batch of one acquisition), half B's films with a gamma of 0.6
(the same patients and class mix through a brighter rendering) and half B's films shrunk to
70 % inside a black frame (a wider field of view), and half B drawn at 50 % pneumonia
(the split has 74 %: a site with fewer pneumonias, same films otherwise). An alarm is any signal
over its threshold (input facts are equal here: DICOM-free, so only the score signals).

    .venv/bin/python benchmarks/bench_drift.py [--windows 50 200] [--draws 500]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from screener.model import load_bundle
from screener.monitor.drift import WindowFilm, compare
from screener.monitor.reference import input_facts, make_reference
from screener.monitor.statistics import null_thresholds
from screener.training import data
from screener.training.guard import bundle_split

REPO = Path(__file__).resolve().parents[1]


def score(bundle: Any, images: Any) -> tuple[Any, Any]:
    """P(pneumonia) and the domain scores of ``images``, in batches of 64."""
    p, d = [], []
    for i in range(0, len(images), 64):
        a = bundle.assess(images[i : i + 64])
        p.append(a.probabilities)
        d.append(a.domain_scores)
    return np.concatenate(p), np.concatenate(d)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(REPO / "models" / "screener-default"))
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "chest_xray" / "train"))
    ap.add_argument("--windows", type=int, nargs="+", default=[30, 50, 200])
    ap.add_argument("--draws", type=int, default=500)
    ap.add_argument("--false-alarm-rate", type=float, default=0.01)
    args = ap.parse_args()

    bundle = load_bundle(args.model)
    train, val, root = bundle_split(bundle, Path(args.data))
    patients = sorted({s.patient for s in val})
    rng = np.random.default_rng(7)
    half_a = set(rng.permutation(patients)[: len(patients) // 2].tolist())
    val_a = [s for s in val if s.patient in half_a]
    val_b = [s for s in val if s.patient not in half_a]
    family = [s for s in train if data.family_of(Path(s.path).name) == "NORMAL2-IM"]
    img_b = data.load_images(root, val_b)
    gamma = (255.0 * (img_b / 255.0) ** 0.6).round().astype(np.uint8)
    framed = np.zeros_like(img_b)  # the film at 70 % inside a black frame: a wider collimation
    from PIL import Image

    for i, im in enumerate(img_b):
        small = np.asarray(Image.fromarray(im).resize((156, 156), Image.Resampling.BILINEAR))
        framed[i, 34:190, 34:190] = small
    sets = {
        "validation half B (films like the reference)": score(bundle, img_b),
        f"NORMAL2-IM family, {len(family)} films outside the validation split": score(
            bundle, data.load_images(root, family)
        ),
        "validation half B at gamma 0.6": score(bundle, gamma),
        "validation half B at 70 % in a black frame": score(bundle, framed),
    }
    # half B drawn so that half the films are pneumonia (the split has 74 %): a site with fewer
    labels_b = np.array([s.label for s in val_b])
    p_b, d_b = sets["validation half B (films like the reference)"]
    keep = np.concatenate(
        [np.flatnonzero(labels_b == 0), np.flatnonzero(labels_b == 1)[: int((labels_b == 0).sum())]]
    )
    sets["validation half B at 50 % pneumonia"] = (p_b[keep], d_b[keep])
    pa, da = score(bundle, data.load_images(root, val_a))
    facts = input_facts(224, 224, 8, "MONOCHROME2", None)
    ref = make_reference(bundle.metadata, pa, da, [facts] * len(pa), made={})
    print(f"reference: half A, {ref.films} films, flag rate {ref.flagged.mean():.3f}")
    threshold = ref.threshold
    guard_t = ref.domain_threshold or np.inf
    for window in args.windows:
        th = null_thresholds(
            ref.probabilities,
            ref.flagged,
            ref.domain_scores,
            ref.outside,
            window,
            args.false_alarm_rate,
        )
        print(
            f"\nwindow {window} films, thresholds "
            + ", ".join(f"{k} {v:.3f}" for k, v in th.items())
        )
        for name, (p, d) in sets.items():
            fired, by_signal = 0, dict.fromkeys(th, 0)
            draw = np.random.default_rng(11)
            for _ in range(args.draws):
                idx = draw.choice(len(p), size=window, replace=len(p) < window)
                films = [
                    WindowFilm(
                        i,
                        float(p[i]),
                        "outside_domain"
                        if d[i] > guard_t
                        else ("pneumonia" if p[i] >= threshold else "normal"),
                        float(d[i]),
                        facts,
                    )
                    for i in idx
                ]
                report = compare(ref, th, films, window, 0.1, "")
                fired += report.state == "drift"
                for s in report.drifted:
                    by_signal[s.signal] += 1
            print(
                f"  {name:<58} alarm in {fired:>4} of {args.draws} windows ({fired / args.draws:.1%}); "
                + ", ".join(f"{k} {v}" for k, v in by_signal.items())
            )


if __name__ == "__main__":
    main()
