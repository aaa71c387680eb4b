"""One :class:`~screener.report.delivery.Channel` per destination, by the channel its address
names (:mod:`screener.report.destinations`): the one place a channel is chosen."""

from __future__ import annotations

from screener.config import Settings
from screener.dicomnet.tls import client_context
from screener.errors import ConfigError
from screener.report.delivery import Channel
from screener.report.destinations import DIMSE, FHIR, HL7, STOW, Target
from screener.report.dimse import DimseChannel
from screener.report.fhir import FhirChannel
from screener.report.hl7 import Hl7Channel
from screener.report.objects import DicomObjects
from screener.report.stow import StowChannel


def open_channel(target: Target, settings: Settings, objects: DicomObjects) -> Channel:
    """The channel that delivers to ``target``; ConfigError when it cannot be set up."""
    if target.channel == DIMSE:
        # DICOM TLS to every C-STORE destination; a certificate that cannot be read stops start-up
        tls = client_context(settings.tls) if settings.export.tls else None
        return DimseChannel(target, settings, objects, tls)
    if target.channel == STOW:  # DICOMweb STOW-RS; credentials and CAs from [dicomweb]
        return StowChannel(target.address, settings, objects)
    if target.channel == HL7:  # HL7 v2.5.1 ORU^R01 over MLLP; [hl7]
        return Hl7Channel(
            target, settings, client_context(settings.tls) if settings.hl7.tls else None
        )
    if target.channel == FHIR:  # a FHIR R4 transaction Bundle; [fhir]
        return FhirChannel(target, settings)
    raise ConfigError(f"{target.channel} destinations are not supported yet ({target.address})")
