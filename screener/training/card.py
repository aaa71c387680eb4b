"""MODEL_CARD.md: what the bundle is for, what it was trained on, how well, and its limits.

The card is a pure function of model.json, so it can be re-rendered at any time
(``write_card(folder, json.loads((folder / "model.json").read_text()))``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from screener.model.bundle import CARD_FILE
from screener.model.metrics import wilson_interval


def reproduce_command(meta: dict[str, Any]) -> str:
    t, opt = meta["training"], meta["training"]["optimiser"]
    split = t["split"]
    parts = [
        "screener train",
        f"--data {t['data_dir']}",
        "--out <folder>",
        f"--backbone {meta['backbone']}",
        f"--weights {meta['initialisation']['weights']}",
        f"--task {meta['task']}",
        f"--epochs {opt['epochs']}",
        f"--patience {opt['patience']}",
        f"--batch-size {opt['batch_size']}",
        f"--learning-rate {opt['learning_rate']}",
        f"--input-size {meta['input_size']}",
        f"--normalisation {meta['preprocessing']['normalisation']}",
        f"--target-sensitivity {meta['target_sensitivity']}",
        f"--seed {t.get('seed', split['seed'])}",
        f"--val-fraction {split['val_fraction']}",
    ]
    if meta.get("width", 32) != 32:
        parts.append(f"--width {meta['width']}")
    if opt.get("ema"):
        parts.append(f"--ema {opt['ema']}")
    if opt.get("label_smoothing"):
        parts.append(f"--label-smoothing {opt['label_smoothing']}")
    if opt.get("mixup"):
        parts.append(f"--mixup {opt['mixup']}")
    crop = meta["preprocessing"].get("crop", 1.0)
    if crop < 1.0:
        parts.append(f"--crop {crop}")
    members = [m for m in t.get("members") or [] if "from" not in m]
    if len(members) > 1:
        parts.append(f"--members {len(members)}")
    for index, _ in enumerate(t.get("with_members") or []):
        parts.append(f"--with-members <run {index + 1}>")
    if t.get("seed", split["seed"]) != split["seed"]:
        parts.append(f"--split-seed {split['seed']}")
    if (meta.get("shift_proxy") or {}).get("probe_bundle"):
        parts.append("--probe <the probe folder, trained with --exclude-family NORMAL2-IM>")
    if t.get("limit"):
        parts.append(f"--limit {t['limit']}")
    if t.get("exclude_family"):
        parts.append(f"--exclude-family {t['exclude_family']}")
    return " \\\n    ".join(parts)


def _joined_runs(meta: dict[str, Any]) -> str:
    """The commands that made the runs whose members joined this one (--with-members)."""
    text = ""
    for index, run in enumerate(meta["training"].get("with_members") or []):
        command = run.get("reproduce") or "(not recorded: the run had not finished as a bundle)"
        text += f"\n`<run {index + 1}>` is the folder of:\n\n```\n{command}\n```\n"
    return text


def _averaging(opt: dict[str, Any]) -> str:
    """The weight averaging and label smoothing a run used, as a clause of the card."""
    out = ""
    if opt.get("ema"):
        out += (
            f", weights averaged (exponential moving average, momentum {opt['ema']}; the "
            "averaged weights validated, checkpointed and shipped)"
        )
    if opt.get("label_smoothing"):
        out += f", label smoothing {opt['label_smoothing']}"
    if opt.get("mixup"):
        out += f", mixup (Beta({opt['mixup']}, {opt['mixup']}))"
    return out


def _probe_section(meta: dict[str, Any]) -> str:
    probe = meta.get("robustness_probe")
    if not probe:
        return ""
    return f"\n## Robustness probe (acquisition shift)\n\n{probe['summary']}\n"


def _f(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{float(value):.{digits}f}"


def _with_interval(value: Any, successes: int | None, n: int) -> str:
    """A proportion with its 95% Wilson interval, when the counts behind it are known."""
    ci = wilson_interval(successes, n) if successes is not None else None
    return _f(value) if ci is None else f"{_f(value)} ({ci[0]:.3f}-{ci[1]:.3f})"


def _shift_section(meta: dict[str, Any]) -> str:
    """The shift proxy: the model-selection criterion, beside the flattering validation."""
    sp = meta.get("shift_proxy")
    if not sp:
        return ""
    if "unseen_pneumonias" in sp:  # a leave-one-family-out fold without a pneumonia family
        return f"""
## Leave-one-family-out fold

This bundle was trained without the {sp["unseen_pneumonias"]} pneumonia films of the
`{sp["family_left_out"]}` file-name family. Scored unseen, together with its validation
normals, at its own threshold: AUC {_f(sp["auc"], 4)}, sensitivity on the unseen family
{_f(sp["sensitivity_unseen"])} ({round(float(sp["missed_unseen"]))} missed), specificity
{_f(sp["specificity"])}, best specificity with sensitivity >= 0.95
{_f(sp["specificity_at_sensitivity_0_95"])}. `screener families` compares folds.
"""
    m = meta["validation_metrics"]
    under = sp.get("under_shift_calibration") or {}
    confusion = m.get("confusion") or {}
    normals = int(sp["unseen_normals"])
    passed = normals - round(float(sp["flagged_unseen"]))
    probe_ci = wilson_interval(passed, normals)
    rows = [
        ("AUC", _f(m["auc"], 4), _f(sp["auc"], 4)),
        (
            "specificity at the threshold (95% CI, Wilson)",
            _with_interval(
                m["specificity"],
                confusion.get("tn"),
                confusion.get("tn", 0) + confusion.get("fp", 0),
            ),
            _with_interval(sp["specificity_unseen"], passed, normals),
        ),
        (
            "best specificity with sensitivity >= 0.95",
            _f(m.get("specificity_at_sensitivity_0_95")),
            _f(sp["specificity_at_sensitivity_0_95"]),
        ),
        ("Brier score", _f(m["brier"], 4), _f(under.get("brier", sp["brier"]), 4)),
        ("ECE (10 bins)", _f(m.get("ece"), 4), _f(under.get("ece", sp["ece"]), 4)),
    ]
    table = "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows)
    source = (
        "this bundle"
        if not sp.get("probe_bundle")
        else (f"the probe bundle `{sp['probe_bundle']['uid']}`, trained by the same recipe")
    )
    text = f"""
## Acquisition-shift proxy (how models were chosen)

The validation split flatters every candidate (AUC ~0.999). The criterion that chose this
model is a *probe*: {source} without the {sp["unseen_normals"]} normal films of the
`{sp["family_left_out"]}` file-name family (a proxy for an acquisition batch), scoring those
unseen normals together with its validation pneumonias, at its own threshold
{_f(sp.get("probe_threshold"), 4)}.

| | validation split | unseen batch (probe) |
|---|---|---|
{table}

Brier and ECE on the probe are under the shipped calibration, fitted on the probe set
itself (in-sample); fitted on alternate halves of the probe set and measured on the other
half they are {_f(under.get("cross_fitted_brier"), 4)} and {_f(under.get("cross_fitted_ece"), 4)}.
"""
    selection = meta.get("model_selection")
    if selection:
        head = "| candidate | probe AUC | probe specificity | best spec. at sens. 0.95 | note |"
        lines = [head, "|---|---|---|---|---|"]
        for c in selection["candidates"]:
            lines.append(
                f"| {c['name']} | {_f(c['auc'], 4)} | {_f(c['specificity_unseen'])} | "
                f"{_f(c.get('specificity_at_sensitivity_0_95'))} | {c.get('note', '')} |"
            )
        text += "\nCandidates, all judged on the probe:\n\n" + "\n".join(lines) + "\n"
        if probe_ci is not None:
            lo, hi = probe_ci
            text += (
                f"\nThe probe has {normals} unseen normals: the 95% interval of this bundle's "
                f"specificity on them is {lo:.3f}-{hi:.3f} (about {normals * (hi - lo) / 2:.0f} "
                "films either way), the spread to expect on another batch like it. Candidates "
                "are scored on the same films, so differences between them are measured more "
                "finely than that; retraining one recipe moves them as well.\n"
            )
        text += f"\n{selection['choice']}\n"
    return text


def _lofo_section(meta: dict[str, Any]) -> str:
    """Leave-one-family-out model selection (``screener families``), when recorded."""
    lofo = (meta.get("model_selection") or {}).get("lofo")
    if not lofo:
        return ""
    from screener.training.lofo_tables import Row, fold_table, summary_table

    rows = [Row(r["candidate"], r["fold"], r["family"], r["figures"]) for r in lofo["folds"]]
    return f"""
## Leave-one-family-out model selection

{lofo["method"]}

Candidates (the criterion: the mean over a candidate's folds of the best specificity with
sensitivity >= 0.95, and of the AUC):

{summary_table(lofo["candidates"])}

Each fold:

{fold_table(rows)}

{lofo["conclusion"]}
"""


def _guards_section(meta: dict[str, Any]) -> str:
    pop, dg = meta.get("population"), meta.get("domain_guard")
    if not pop and not dg:
        return ""
    text = "\n## Guards: what the model declines to judge\n\n"
    if pop:
        lo, hi = pop["age_years"]
        text += (
            f"- **Population**: {pop['description']}; source: {pop['source']}. A film whose Patient's "
            f"Age (or Birth Date against Study Date) is outside {lo}-{hi} years is `skipped` "
            "with reason `population:age` and never scored. A site that has validated the "
            "model on its own patients can widen this with `[population] min_age_years` / "
            "`max_age_years` in screener.toml.\n"
        )
    if dg:
        text += (
            f"- **Domain** (no header needed): {dg['method']}; {dg['components']} components "
            f"(layers {', '.join(dg['layers'])}). Threshold {dg['threshold']:.2f} = "
            f"{dg['threshold_rule']}: {100 * dg['validation_pass_rate']:.1f}% of validation "
            "films pass. A film beyond it is recorded `outside_domain` with its score, is never "
            "flagged, and its SR says *not assessed*.\n"
        )
        unseen = (meta.get("shift_proxy") or {}).get("domain_pass_rate_unseen")
        if unseen is not None:
            text += (
                f"  On the probe's unseen batch of normals, {100 * unseen:.1f}% pass (in-population "
                "films from an acquisition batch the network never saw).\n"
            )
        checks = dg.get("checks")
        if checks:
            text += "\n| films | n | outside the domain | flagged |\n|---|---|---|---|\n"
            for c in checks:
                text += (
                    f"| {c['what']} | {c['n']} | {100 * c['outside']:.1f}% | "
                    f"{100 * c['flagged']:.1f}% |\n"
                )
            text += (
                "\nThe domain guard is not an age detector: adult chest films whose header "
                "gives no age mostly pass it (the rows with ages ignored), and the network "
                "flags many of them. The population guard, reading the age, is what keeps "
                "adults out; every one of these adult films carries an age and is skipped.\n"
            )
    return text


def render_card(meta: dict[str, Any]) -> str:
    """The model card's Markdown, filled in from model.json."""
    m = meta["validation_metrics"]
    t = meta["training"]
    v = t["versions"]
    split = t["split"]
    tr, va = split["train"], split["validation"]
    c = m["confusion"]
    init = meta["initialisation"]
    cal = meta["calibration"]
    lo, hi = m["auc_ci95"]
    data_note = f"{t['images']} images"
    if t.get("limit"):
        data_note += f" (a stratified sample, --limit {t['limit']})"
    if t.get("exclude_family"):
        kind = "pneumonia" if t["exclude_family"] in ("bacteria", "virus") else "normal"
        data_note += f"; {kind} films of the `{t['exclude_family']}` file-name family left out"
    return f"""# Model card: {meta["name"]} {meta["version"]}

- **Bundle UID** (usable as a DICOM Device Observer UID): `{meta["uid"]}`
- **Created**: {meta["created"]} with screener {v["screener"]}, TensorFlow {v["tensorflow"]}, \
Keras {v["keras"]}
- **Output**: calibrated probability that a chest radiograph shows pneumonia; the film is \
flagged when P >= **{meta["threshold"]:.4f}**.

## Intended use

A **second-read flag**: screener marks chest X-rays that a radiologist should look at again
because the model considers pneumonia likely. It is **not a diagnosis**, must not be used to
rule pneumonia out, and must not delay or replace the normal reading of any study. A film
that is not flagged has simply not been flagged.

## Training data

- Kermany, Zhang, Goldbaum et al., *Cell* 2018 ("Chest X-Ray Images (Pneumonia)", Mendeley
  Data v2, CC BY 4.0), training folder only: **pediatric anterior-posterior chest films from
  one centre, Guangzhou Women and Children's Medical Center**, resized to 224 x 224 8-bit
  grey. Labels are the data set's: normal vs pneumonia (bacterial or viral).
- {data_note}; fingerprint `{t["data_fingerprint"]}` ({t["fingerprint_method"]}).
- Validation split **by patient** (no patient on both sides), stratified on label, seed \
{split["seed"]}, {100 * split["val_fraction"]:.0f}% of patients:
  - train: {tr["images"]} images, {tr["patients"]} patients \
({tr["normal"]} normal, {tr["pneumonia"]} pneumonia);
  - validation: {va["images"]} images, {va["patients"]} patients \
({va["normal"]} normal, {va["pneumonia"]} pneumonia).

## Model and training

- Backbone `{meta["backbone"]}`, {meta["parameters"]:,} parameters, task `{meta["task"]}`, \
input {meta["input_size"]} x {meta["input_size"]} grey.
- **Initialisation: {init["note"]}.** No ImageNet (or other pretrained) weights were \
available on the machine this bundle was trained on; nothing here benefits from transfer \
learning.
- Preprocessing, inside the bundle and identical in training and serving: per-image \
`{meta["preprocessing"]["normalisation"]}` intensity normalisation (histogram counted away \
from the borders), resize to {meta["input_size"]} px, scale to [0, 1].
- AdamW with warm-up and cosine learning-rate decay, balanced class weights, augmentation \
(rotation, shift, zoom, gamma, contrast, brightness, blur, noise; no flips), checkpoint and \
early stopping on validation AUC{_averaging(t["optimiser"])}: best epoch {t["best_epoch"]} of {t["epochs_run"]}, \
{t["seconds"] / 60:.0f} min on {t["host"]["cpus"]} CPU cores, no GPU.
{_members_line(t)}{_cost_line(meta)}- Calibration: Platt scaling fitted on the {cal.get("fitted_on", "validation split")} \
(a = {cal["a"]:.3f}, b = {cal["b"]:.3f}); validation log-loss {cal["val_log_loss_before"]:.4f} before, \
{cal["val_log_loss_after"]:.4f} after.
- **Threshold rule**: {meta["threshold_rule"]} (target {meta["target_sensitivity"]:.2f}). \
The lower bound builds in a margin for the size of the validation set; the validation \
specificity played no part in the choice.

Reproduce (same data and seed; bit-identical only with the same software and CPU):

```
{reproduce_command(meta)}
```
{_joined_runs(meta)}
## Validation metrics (patient-level validation split, shipped threshold)

| metric | value |
|---|---|
| AUC (95% CI, bootstrap) | {m["auc"]:.4f} ({lo:.4f}-{hi:.4f}) |
| sensitivity | {m["sensitivity"]:.4f} |
| specificity | {m["specificity"]:.4f} |
| PPV / NPV | {m["ppv"]:.4f} / {m["npv"]:.4f} |
| accuracy / F1 | {m["accuracy"]:.4f} / {m["f1"]:.4f} |
| Brier score | {m["brier"]:.4f} |
| TP / FP / TN / FN | {c["tp"]} / {c["fp"]} / {c["tn"]} / {c["fn"]} |

`screener evaluate --model <this folder> --split validation` recomputes the split from
model.json and reproduces these numbers; see also `roc.png` and `confusion.png`.

**These figures flatter the model.** The validation films come from the same centre, the
same acquisition batches and the same curation as the training films, and calibration and
threshold were fitted on them. A compact CNN trained on this data set has been seen to reach
validation AUC 0.997 yet 0.939 on the data set's own held-out split, with specificity
falling to 0.64, because the held-out normal films look different. Expect lower specificity
(more flags) at any other site, scanner or period, and measure it locally before use.
{_shift_section(meta)}{_lofo_section(meta)}{_guards_section(meta)}{_probe_section(meta)}
**Specificity at a new site will be lower** than any figure above: more normal films will
be flagged. Measure it on your own reviewed reads (`screener stats`) and refit the operating
point with `screener calibrate --from-reviews` before relying on the flag.

## Limits

- Pediatric AP films from one centre only: adults, PA films, lateral views, other sites,
  scanners, processing chains and portable/ICU films are outside what it has seen.
- Trained on 224 px 8-bit JPEG renderings. DICOM input goes through screener's pixel
  pipeline (Modality/VOI LUT, MONOCHROME1 inversion, resize), which is not how the training
  images were made; rendering differences shift the scores.
- Labels are the data set's own grading, not a reference standard. It says nothing about
  other findings (effusion, pneumothorax, tubes, masses, ...).
- Probabilities are calibrated on the {cal.get("fitted_on", "validation split")}, at its
  prevalence of pneumonia; where pneumonia is rarer the PPV is lower.
- Grad-CAM heat maps (`screener predict --heatmap`) show coarsely where the network's
  evidence lies; they are not a localisation of disease.
"""


def _cost_line(meta: dict[str, Any]) -> str:
    cost = meta.get("serving_cost")
    if not cost:
        return ""
    return (
        f"- **Serving cost**: {cost['ms_per_film']:.1f} ms per film (score and domain guard, "
        f"batches of 32) against {cost['previous_ms_per_film']:.1f} ms for the bundle it "
        f"replaces ({cost['previous']}), {cost['how']}.\n"
    )


def _members_line(t: dict[str, Any]) -> str:
    members = t.get("members") or []
    if len(members) <= 1:
        return ""
    seeds = ", ".join(
        str(m["seed"]) + (f" ({m['variant']})" if m.get("variant") else "") for m in members
    )
    epochs = ", ".join(f"{m['best_epoch']}/{m['epochs_run']}" for m in members)
    minutes = sum(m["seconds"] for m in members) / 60
    how = (
        "trained on one split, those marked in brackets by another recipe in another run "
        "(`--with-members`)"
        if any(m.get("from") for m in members)
        else "trained alike on one split"
    )
    return (
        f"- **Deep ensemble of {len(members)} networks** (seeds {seeds}; best epoch / epochs run "
        f"{epochs}; {minutes:.0f} min in all), {how}; the bundle averages "
        "their logits (Lakshminarayanan et al., NeurIPS 2017). The figures above for epochs "
        "are the first member's.\n"
    )


def write_card(out_dir: Path, meta: dict[str, Any]) -> None:
    (out_dir / CARD_FILE).write_text(render_card(meta))
