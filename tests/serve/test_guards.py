"""The model's guards on the shipped bundle: a film outside the population is skipped, a
film unlike the training films is recorded ``outside_domain`` (never flagged, its SR says
not assessed), and the pediatric films the model is for pass both."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from support import (
    dcmtk_tool,
    film_dicom,
    free_port,
    run_screener,
    serve_env,
    storescu,
    wait_for,
)

from screener.db import OUTSIDE_DOMAIN
from screener.model import Bundle, load_bundle
from screener.model.inputs import load_frames

STORESCP = dcmtk_tool("storescp")
DSRDUMP = dcmtk_tool("dsrdump")


@pytest.fixture(scope="module")
def shipped(model_bundle: Path) -> Bundle:
    return load_bundle(model_bundle)


@pytest.fixture(scope="module")
def validation(shipped: Bundle, data_dir: Path) -> tuple[Any, Any]:
    """The bundle's own validation split (recomputed from model.json): images, labels."""
    from screener.training import data
    from screener.training.guard import bundle_split

    _, val, root = bundle_split(shipped, data_dir / "chest_xray" / "train")
    return data.load_images(root, val), np.array([s.label for s in val])


def test_shipped_bundle_declares_population_and_guard(shipped: Bundle) -> None:
    """The bundle says whom it is for (children 1-5 years) and carries a fitted domain guard."""
    assert shipped.metadata["population"]["age_years"] == [1, 5]
    assert shipped.guard is not None
    assert shipped.metadata["domain_guard"]["threshold"] == pytest.approx(shipped.guard.threshold)


def test_assess_gives_predicts_probabilities(shipped: Bundle, validation: tuple[Any, Any]) -> None:
    """The serving path (one pass for score and guard) gives exactly the probabilities of predict."""
    images = validation[0][:64]
    assessed = shipped.assess(images)
    assert np.abs(assessed.probabilities - shipped.predict(images)).max() < 1e-6
    assert assessed.domain_scores is not None and np.isfinite(assessed.domain_scores).all()


def test_validation_films_pass_the_domain_guard(
    shipped: Bundle, validation: tuple[Any, Any]
) -> None:
    """At least 99 % of the pediatric validation films pass, as recorded when the guard was fitted."""
    images, _ = validation
    scores = shipped.assess(images).domain_scores
    assert scores is not None
    rate = float(np.mean(scores <= shipped.guard.threshold))  # type: ignore[union-attr]
    assert rate >= 0.99
    # as recorded, give or take the film that lies on the threshold (6e-6 above it on one
    # machine, below on another: float32 CPU kernels differ in the last bits by CPU)
    recorded = shipped.metadata["domain_guard"]["validation_pass_rate"]
    assert abs(rate - recorded) * len(images) <= 1 + 1e-9


def _foreign(validation: tuple[Any, Any], dicom_dir: Path) -> dict[str, list[Any]]:
    images = validation[0][:20]
    rng = np.random.default_rng(0)
    hopper = Path(__import__("matplotlib").get_data_path()) / "sample_data" / "grace_hopper.jpg"
    from screener.imaging import load_raster

    wg04 = []
    for path in sorted((dicom_dir / "wg04_nonchest").glob("*.dcm")):
        if "JPLY" not in path.name:  # the two JPLY files do not decode (tests/imaging)
            wg04.extend(load_frames(path))
    return {
        "constant": [np.full((224, 224), v, np.uint8) for v in (0, 40, 128, 200, 255)],
        "noise": [rng.integers(0, 256, (224, 224)).astype(np.uint8) for _ in range(5)],
        "inverted": [255 - x for x in images],
        "rotated 90": [np.rot90(x).copy() for x in images],
        "hip and tibia (WG04)": wg04,
        "natural image": [load_raster(hopper)],
    }


def test_foreign_images_are_outside_the_domain(
    shipped: Bundle, validation: tuple[Any, Any], dicom_dir: Path
) -> None:
    """Constant, noise, inverted, rotated, non-chest and natural images all fall outside the domain."""
    for what, images in _foreign(validation, dicom_dir).items():
        assessed = shipped.assess(np.stack(images))
        inside = [i for i in range(len(images)) if assessed.in_domain(i)]
        assert inside == [], f"{what}: {len(inside)} of {len(images)} passed the domain guard"


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[Path]:
    if STORESCP is None or DSRDUMP is None:
        pytest.skip("dcmtk (storescp, dsrdump) not installed")
    out = tmp_path / "pacs"
    out.mkdir()
    port = free_port()
    proc = subprocess.Popen(
        [STORESCP, "-od", str(out), "-aet", "PACS", "+xa", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    (out / ".port").write_text(str(port))
    yield out
    proc.terminate()
    proc.wait(timeout=30)


@pytest.mark.timeout(300)  # 46 s on a loaded 2-core host
def test_serve_applies_both_guards(
    tmp_path: Path,
    sqlite_url: str,
    serve_process: Callable[..., Any],
    pacs: Path,
    dicom_dir: Path,
    validation: tuple[Any, Any],
) -> None:
    """Pushed to `screener serve`: the 13 chest films of patients aged 10 to 81 (SIIM CR,
    NIH DX) are all skipped (population:age), none scored or flagged; a hip film forced
    through selection is outside the domain, with a not-assessed SR and NOT ASSESSED on the
    worklist; a pediatric validation film passes both guards and is scored."""
    port = free_port()
    pacs_port = (pacs / ".port").read_text()
    env = serve_env(
        tmp_path,
        sqlite_url,
        port,
        SCREENER_EXPORT_DESTINATIONS=f"PACS@127.0.0.1:{pacs_port}",
        SCREENER_POPULATION_MAX_AGE_YEARS="-1",  # the bundle's own population
        SCREENER_SELECTION_BODY_PARTS="CHEST,HIP",  # force the hip film through selection
    )
    daemon = serve_process(env).start()
    child = tmp_path / "child.dcm"
    child.write_bytes(film_dicom(validation[0][0], patient_age="003Y", accession="CHILD"))
    adults = sorted((dicom_dir / "siim_chest_cr").glob("*.dcm"))  # ages 10 to 69
    adults += [dicom_dir / "nih_dx_header_variants" / f"test{i}.dcm" for i in (1, 2, 3)]
    hip = dicom_dir / "wg04_nonchest" / "RG2_RLE.dcm"
    storescu(port, [child, hip, *adults])

    def show(path: Path) -> dict[str, Any]:
        uid = str(dcmread(path, stop_before_pixels=True).StudyInstanceUID)
        out = run_screener(env, tmp_path, "show", uid, "--json")
        assert out.returncode == 0, out.stderr
        return dict(json.loads(out.stdout))

    def settled() -> bool:
        return all(
            (d := show(p))["images"] and d["images"][0]["job_state"] in ("done", "skipped")
            for p in (child, hip, *adults)
        )

    wait_for(settled, timeout=120, interval=0.5)
    for adult in adults:
        image = show(adult)["images"][0]
        assert (image["job_state"], image["job_reason"]) == ("skipped", "population:age")
        assert image["results"] == []
    (child_result,) = show(child)["images"][0]["results"]
    assert child_result["label"] in ("normal", "pneumonia")
    hip_study = show(hip)
    (hip_result,) = hip_study["images"][0]["results"]
    assert hip_result["label"] == "outside_domain" and hip_result["domain_score"] is not None
    assert hip_study["score"]["flagged"] is False
    assert hip_study["score"]["assessment"] == "outside_domain"
    worklist = run_screener(env, tmp_path, "worklist").stdout
    assert "NOT ASSESSED" in worklist
    status = json.loads(run_screener(env, tmp_path, "status", "--json").stdout)
    assert status["reasons"]["skipped"] == {"population:age": len(adults)}
    assert status["results"][OUTSIDE_DOMAIN] == 1
    assert (
        "1 not assessed (outside the model's domain)"
        in run_screener(env, tmp_path, "status").stdout
    )

    hip_uid = str(dcmread(hip, stop_before_pixels=True).SOPInstanceUID)

    def received() -> list[Path]:
        return [f for f in pacs.iterdir() if not f.name.startswith(".")]

    wait_for(lambda: len(received()) >= 2, timeout=60, interval=0.2)
    for sr_file in received():
        sr = dcmread(sr_file)
        source = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
        referenced = str(source.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        assert DSRDUMP is not None
        text = subprocess.run(
            [DSRDUMP, str(sr_file)], capture_output=True, text=True, timeout=30
        ).stdout
        if referenced == hip_uid:
            assert "Not assessed" in text and "Indeterminate" in text
            assert "Certainty of Finding" not in text
        else:
            assert "Not assessed" not in text
    assert daemon.terminate() == 0
