"""Which channel each configured destination names, and the entries refused at start-up."""

from __future__ import annotations

import pytest

from screener.config import load_settings
from screener.errors import ConfigError
from screener.report.destinations import dicom_targets, parse_target, result_targets


@pytest.mark.parametrize(
    ("entry", "channel", "address"),
    [
        ("PACS@10.0.0.5:104", "dimse", "PACS@10.0.0.5:104"),
        (" PACS@[::1]:11112 ", "dimse", "PACS@[::1]:11112"),
        ("https://pacs.example.org/dicom-web/", "stow", "https://pacs.example.org/dicom-web"),
        ("HTTP://pacs:8042/dicom-web", "stow", "http://pacs:8042/dicom-web"),
        ("mllp://ris.example.org:2575", "hl7", "mllp://ris.example.org:2575"),
        ("mllp://[::1]:2575/", "hl7", "mllp://[::1]:2575"),
        ("fhir+https://ehr.example.org/fhir/", "fhir", "fhir+https://ehr.example.org/fhir"),
    ],
)
def test_each_destination_names_its_channel(entry: str, channel: str, address: str) -> None:
    """Each kind of entry is read as its channel, and its address is stored normalised."""
    target = parse_target(entry)
    assert (target.channel, target.address) == (channel, address)


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ("https://user:secret@pacs/dicom-web", "credentials"),
        ("https://pacs/dicom-web?token=x", "query"),
        ("https://pacs:notaport/dicom-web", "invalid port"),
        ("mllp://ris.example.org", "mllp://HOST:PORT"),
        ("mllp://ris.example.org:2575/path", "nothing after the port"),
        ("ftp://pacs/dicom-web", "AE_TITLE@HOST:PORT"),
        ("https://" + "a" * 600, "at most 512"),
    ],
)
def test_malformed_destinations_are_refused_with_the_rule(entry: str, says: str) -> None:
    """A malformed entry stops start-up with the rule it broke, never echoing a credential."""
    with pytest.raises(ConfigError, match=says) as caught:
        parse_target(entry)
    assert "secret" not in str(caught.value)


def test_results_go_everywhere_and_reads_only_to_the_dicom_destinations() -> None:
    """A result goes over every channel; an assessment (a read) over C-STORE and STOW-RS only."""
    settings = load_settings(
        "/dev/null",
        {
            "export.destinations": ["PACS@10.0.0.5:104", "https://pacs/dicom-web"],
            "hl7.destinations": ["mllp://ris:2575"],
            "fhir.base_url": "https://ehr/fhir",
        },
    )
    assert [t.channel for t in result_targets(settings)] == ["dimse", "stow", "hl7", "fhir"]
    assert [t.channel for t in dicom_targets(settings)] == ["dimse", "stow"]


def test_an_hl7_destination_must_be_mllp_and_none_may_repeat() -> None:
    """hl7.destinations takes mllp:// only, and the same address twice is refused."""
    wrong = load_settings("/dev/null", {"hl7.destinations": ["RIS@10.0.0.5:104"]})
    with pytest.raises(ConfigError, match=r"hl7\.destinations"):
        result_targets(wrong)
    twice = load_settings(
        "/dev/null", {"export.destinations": ["https://pacs/dicom-web", "https://pacs/dicom-web/"]}
    )
    with pytest.raises(ConfigError, match="twice"):
        result_targets(twice)
