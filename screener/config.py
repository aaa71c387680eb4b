"""Settings: one typed schema, four sources.

Precedence, highest first: command line (``--set section.key=value`` and the named
flags) > ``SCREENER_<SECTION>_<KEY>`` environment variables > the TOML file > defaults.

Every setting is declared once, below, with its default, its allowed values and a one-line
comment; ``screener.toml`` at the repository root is rendered from this schema (a test keeps
the two equal). An invalid value stops start-up with a :class:`ConfigError` naming the key,
the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from screener.errors import ConfigError

ENV_PREFIX = "SCREENER_"

#: Read in this order when neither ``--config`` nor ``SCREENER_CONFIG`` names a file.
DEFAULT_CONFIG_FILES = ("screener.toml", "/etc/screener/screener.toml")


def _opt(default: Any, help: str, **rules: Any) -> Any:
    """A setting with its default, its comment and its validation rules."""
    meta = {"help": help, **rules}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = _opt(
        "sqlite:///var/screener.db",
        "SQLAlchemy URL: sqlite:///PATH (embedded) or postgresql+psycopg://USER@HOST/DB",
        pattern=("sqlite:", "postgresql"),
        path="sqlite",
    )


@dataclass(frozen=True)
class ListenerSettings:
    enabled: bool = _opt(True, "run the DICOM C-STORE / C-ECHO listener in `screener serve`")
    ae_title: str = _opt("SCREENER", "our AE title (1-16 characters, no backslash)", ae_title=True)
    host: str = _opt("0.0.0.0", "address to listen on")
    port: int = _opt(11112, "TCP port to listen on", min=1, max=65535)
    allowed_calling_aets: list[str] = _opt(
        [], "calling AE titles allowed to associate; empty list = any caller"
    )
    require_called_aet: bool = _opt(
        False, "refuse an association whose called AE title is not ae_title (PS3.8 7.1.1.6)"
    )
    prefer_compressed: bool = _opt(
        False,
        "take a compressed transfer syntax over uncompressed when a sender offers both (see README)",
    )
    max_associations: int = _opt(10, "most simultaneous associations", min=1, max=1000)
    processes: int = _opt(
        1,
        "listener processes sharing the port (SO_REUSEPORT; Linux), each its own AE: the "
        "extra ones are child processes restarted like the workers; 1 = the daemon's own only",
        min=1,
        max=256,
    )
    network_timeout: float = _opt(
        60.0, "seconds of network silence before an association is aborted", min=1
    )
    # The largest legitimate data set is a big multi-frame DX at the pixel budget:
    # worker.decode_max_pixels (50 million) 16-bit pixels are 100 MB of Pixel Data, so 256 MB
    # leaves room for the header and a few frames more; a deflate bomb or a data set streamed
    # without end is cut off there rather than at the host's memory.
    max_dataset_mb: int = _opt(
        256,
        "largest data set taken, in MB, as received and (Deflated) as inflated: by C-STORE, "
        "the watch folder and the web; above it: A700 or an aborted association, a rejected "
        "file, a refused upload. 256 holds the largest legitimate one (worker.decode_max_pixels "
        "16-bit pixels: 100 MB)",
        min=1,
        max=4096,
    )
    tls: bool = _opt(
        False,
        "accept DICOM TLS only (PS3.15 B.9, BCP 195): needs tls.certificate and tls.private_key",
    )


@dataclass(frozen=True)
class TlsSettings:
    certificate: str = _opt(
        "", "our certificate chain (PEM), presented as listener and as client", path=True
    )
    private_key: str = _opt(
        "", "its private key (PEM, unencrypted, readable only by us)", path=True
    )
    ca_certificates: str = _opt(
        "",
        "CA certificates (PEM) that peers' certificates must chain to; when set, the listener "
        "requires a client certificate; empty = the system's CAs for peers we call, none asked of callers",
        path=True,
    )
    check_hostname: bool = _opt(
        True, "as a client, the peer's certificate must name the host (or IP address) we call"
    )


@dataclass(frozen=True)
class StorageSettings:
    spool_dir: str = _opt(
        "var/spool", "where accepted instances are kept until processed", path=True
    )
    min_free_mb: int = _opt(
        500, "refuse C-STORE (A700 out of resources) when the spool disk has less free space", min=0
    )
    duplicate_policy: str = _opt(
        "keep_first",
        "a resent SOP Instance UID whose content changed: keep_first ignores it, replace re-screens",
        choices=("keep_first", "replace"),
    )
    retention_days: float = _opt(
        3.0,
        "delete a spooled image this long after it was settled (every job ended, every SR "
        "delivered); results stay. 0 = no age limit",
        min=0,
    )
    max_spool_mb: int = _opt(
        0,
        "above this total, settled images are deleted oldest first even before retention_days; "
        "0 = no cap. Never an image queued, processing or with an SR undelivered",
        min=0,
    )
    adopt_spool: bool = _opt(
        False,
        "start even if the spool was used with another database, and queue its files in this one "
        "(they are screened, and their SRs sent, again)",
    )
    purge_interval_minutes: float = _opt(
        60.0,
        "how often `screener serve` applies retention; 0 = never (use `screener purge`)",
        min=0,
    )
    audit_retention_days: float = _opt(
        90.0,
        "delete audit_events rows older than this with each retention run, keeping their counts "
        "per day, event and reason (audit_counts: status totals include them); 0 = keep for ever",
        min=0,
    )


@dataclass(frozen=True)
class WatchSettings:
    enabled: bool = _opt(True, "watch a folder for dropped DICOM files in `screener serve`")
    dir: str = _opt(
        "var/incoming", "the watched folder (any file name; DICOM recognised by content)", path=True
    )
    rejected_dir: str = _opt(
        "var/rejected", "where unreadable files go, each with a .reason.txt", path=True
    )
    settle_seconds: float = _opt(
        2.0, "a file is taken once its size and mtime are unchanged this long", min=0
    )
    poll_seconds: float = _opt(0.5, "how often pending files are re-checked", min=0.05)


@dataclass(frozen=True)
class SelectionSettings:
    modalities: list[str] = _opt(["CR", "DX"], "Modality values that are screened")
    body_parts: list[str] = _opt(["CHEST"], "BodyPartExamined values that are screened")
    allow_missing_body_part: bool = _opt(True, "screen when BodyPartExamined is absent or empty")
    view_positions: list[str] = _opt(["PA", "AP"], "ViewPosition values that are screened")
    allow_missing_view_position: bool = _opt(True, "screen when ViewPosition is absent or empty")


@dataclass(frozen=True)
class PopulationSettings:
    min_age_years: int = _opt(
        -1, "youngest screened age, completed years; -1 = the model bundle's population", min=-1
    )
    max_age_years: int = _opt(
        -1, "oldest screened age, completed years; -1 = the model bundle's population", min=-1
    )
    allow_unknown_age: bool = _opt(
        True, "screen a film whose age is in neither Patient's Age nor Birth Date + Study Date"
    )
    domain_guard: bool = _opt(
        True, "a film beyond the bundle's domain threshold is recorded outside_domain, unflagged"
    )


@dataclass(frozen=True)
class QueueSettings:
    lease_seconds: float = _opt(
        300.0, "a dequeued job returns to the queue if not finished in this time", min=1
    )
    max_attempts: int = _opt(3, "after this many attempts a job becomes failed", min=1)


@dataclass(frozen=True)
class WorkerSettings:
    enabled: bool = _opt(True, "run a worker loop in `screener serve`")
    max_batch: int = _opt(32, "most jobs taken per batch", min=1, max=1024)
    max_wait_ms: int = _opt(
        200,
        "longest a partial batch waits for more jobs while they keep arriving (a tick of 20 ms "
        "without one runs it at once)",
        min=0,
    )
    poll_seconds: float = _opt(0.5, "idle poll interval of the worker loop", min=0.01)
    device: str = _opt(
        "auto", "inference device: auto, cpu or gpu:N", pattern=("auto", "cpu", "gpu:")
    )
    processes: int = _opt(
        1, "worker processes started by `screener serve` (one per GPU)", min=1, max=64
    )
    decode_processes: int = _opt(
        1,
        "processes per worker decoding pixels while the model scores a batch; 0 = inline",
        min=0,
        max=64,
    )
    decode_memory_mb: int = _opt(
        2048,
        "address-space limit of each decode process in MB (a file needing more fails as"
        " decode_memory_limit); 0 = none",
        min=0,
    )
    decode_max_pixels: int = _opt(
        50_000_000,
        "most pixels (Rows x Columns x frames x samples) a film may have; more fails as"
        " image_too_large before decoding",
        min=1,
    )
    max_restarts: int = _opt(
        5,
        "a worker process that dies is restarted; this many restarts within"
        " restart_window_seconds ends `serve` with exit status 3 (a crash loop)",
        min=1,
    )
    restart_window_seconds: float = _opt(
        600.0, "the window in which worker restarts are counted", min=1
    )
    restart_backoff_seconds: float = _opt(
        1.0,
        "delay before the first restart of a dead worker; doubles each time, at most 60 s",
        min=0,
    )
    inference_threads: int = _opt(
        0,
        "CPU threads TensorFlow may use per worker; 0 = its default (every core). On a CPU-only"
        " host, fewer leaves cores to decoding",
        min=0,
        max=1024,
    )


@dataclass(frozen=True)
class ModelSettings:
    bundle: str = _opt(
        "",
        "the model bundle folder (model.json + Keras model); empty = the bundle shipped with screener",
        path="bundle",
    )
    engine: str = _opt(
        "graph",
        "how the model runs: graph = one traced TensorFlow graph per batch (faster), "
        "eager = Keras calls (the reference); both give the same scores to 1e-4",
        choices=("graph", "eager"),
    )


@dataclass(frozen=True)
class ExportSettings:
    enabled: bool = _opt(True, "run the exporter in `screener serve` (when destinations are set)")
    destinations: list[str] = _opt(
        [],
        "where each SR is sent: AE_TITLE@HOST:PORT entries (C-STORE) or a DICOMweb service's "
        "base URL, https://HOST/dicom-web (STOW-RS, the [dicomweb] section); empty = keep "
        "results local",
    )
    sr_kind: str = _opt(
        "3d",
        "3d = Comprehensive 3D SR (1.2.840.10008.5.1.4.1.1.88.34); comprehensive = Comprehensive SR (.88.33)",
        choices=("3d", "comprehensive"),
    )
    heatmap_capture: bool = _opt(
        False, "also send a Secondary Capture of the heatmap overlay in the same study"
    )
    max_attempts: int = _opt(
        8, "after this many failed deliveries an export is dead-lettered", min=1
    )
    backoff_seconds: float = _opt(
        10.0, "delay before the first retry; doubles with each failure", min=0
    )
    backoff_max_seconds: float = _opt(3600.0, "longest delay between retries", min=0)
    poll_seconds: float = _opt(1.0, "how often pending deliveries are looked for", min=0.05)
    timeout_seconds: float = _opt(30.0, "network timeout of one delivery association", min=1)
    tls: bool = _opt(False, "deliver to every destination over DICOM TLS (the [tls] section)")
    assessments: bool = _opt(
        False,
        "send each radiologist's read back as an IHE AIRAI assessment SR (accepted / rejected, "
        "the reader as observer, referencing the AI result SR) to every DICOM destination that "
        "has that SR; a read that cannot tell sends none",
    )


@dataclass(frozen=True)
class Hl7Settings:
    destinations: list[str] = _opt(
        [],
        "RIS/EHR receivers of an HL7 v2.5.1 ORU^R01 per result, over MLLP: mllp://HOST:PORT "
        "entries, sent through the export queue like the SRs; empty = none",
    )
    sending_application: str = _opt("SCREENER", "MSH-3 Sending Application (HD namespace ID)")
    sending_facility: str = _opt("", "MSH-4 Sending Facility; empty = not sent")
    receiving_application: str = _opt("", "MSH-5 Receiving Application; empty = not sent")
    receiving_facility: str = _opt("", "MSH-6 Receiving Facility; empty = not sent")
    processing_id: str = _opt(
        "P", "MSH-11 Processing ID: P production, T training, D debugging", choices=("P", "T", "D")
    )
    timeout_seconds: float = _opt(
        30.0, "seconds to connect to a receiver and to wait for each ACK", min=1
    )
    priority_update: str = _opt(
        "off",
        "raise the order's priority to STAT (TQ1-9 = S in the ORU^R01) for: off = never; "
        "flagged = results at or above the threshold; flagged_or_unassessed = those and images "
        "the model could not assess; a priority is never lowered (none is sent otherwise)",
        choices=("off", "flagged", "flagged_or_unassessed"),
    )
    tls: bool = _opt(
        False,
        "MLLP over TLS to every HL7 destination, with the [tls] section's certificate and CAs "
        "(as export.tls for C-STORE); off = plain TCP, for a VPN or an interface engine on the host",
    )


@dataclass(frozen=True)
class FhirSettings:
    base_url: str = _opt(
        "",
        "a FHIR R4 server's base URL (https://HOST/fhir): each result is POSTed there as a "
        "transaction Bundle (DiagnosticReport, Observation, Device) through the export queue; "
        "empty = none",
    )
    token_file: str = _opt(
        "",
        "a file holding the bearer token sent as Authorization: Bearer (one line, readable only "
        "by us; read at each delivery, so a renewed token needs no restart); empty = none",
        path=True,
    )
    ca_certificates: str = _opt(
        "",
        "CA certificates (PEM) that an https:// FHIR server must chain to; empty = the system's "
        "CAs (tls.certificate, when set, is presented: mutual TLS)",
        path=True,
    )
    timeout_seconds: float = _opt(30.0, "seconds to connect and to wait for the answer", min=1)
    patient_id_system: str = _opt(
        "",
        "the identifier system (URI) of the site's patient IDs, e.g. urn:oid:1.2.3: the report's "
        "subject is then the Patient with that identifier (DICOM Patient ID); empty = no subject "
        "is sent (the report names the study and the accession number only)",
    )


@dataclass(frozen=True)
class DicomwebSettings:
    accept_stow: bool = _opt(
        False,
        "accept STOW-RS (POST /dicom-web/studies, multipart/related application/dicom) on the "
        "web worklist's port, into the same checks as C-STORE; callers authenticate with Basic "
        "(a web.admins user) or a Bearer token from tokens_file",
    )
    tokens_file: str = _opt(
        "",
        "machine clients allowed to STOW-RS to us: one NAME:SHA256 line each, SHA256 the hex "
        "digest of the client's bearer token (printf %s TOKEN | sha256sum); empty = none",
        path=True,
    )
    auth_file: str = _opt(
        "",
        "credentials we send to the STOW-RS destinations of export.destinations: one line, "
        "`Bearer TOKEN` or `Basic USER:PASSWORD` (readable only by us); empty = none",
        path=True,
    )
    ca_certificates: str = _opt(
        "",
        "CA certificates (PEM) that https:// STOW-RS destinations must chain to; empty = "
        "tls.ca_certificates, or the system's CAs (tls.certificate, when set, is presented)",
        path=True,
    )


@dataclass(frozen=True)
class SiteSettings:
    mode: str = _opt(
        "live",
        "shadow = silent start: score, list and show everything but send nothing to PACS until "
        "`screener site go-live` records this bundle going live; live = send as results come "
        "(deploy/ ships shadow; see README, Silent start and going live)",
        choices=("shadow", "live"),
    )
    audit_share: float = _opt(
        0.05,
        "share of the studies the model does not flag that are drawn at random, when first "
        "scored, for an audit read (stats and calibrate weight reads by 1/share against "
        "verification bias; README, Audit reads); 0 = none",
        min=0.0,
        max=1.0,
    )
    audit_seed: str = _opt(
        "",
        "the secret the draw is keyed with (HMAC-SHA256 of the Study Instance UID); empty = "
        "this database's installation id",
    )


@dataclass(frozen=True)
class RescanSettings:
    pacs: str = _opt("", "PACS to query for missed studies: AE_TITLE@HOST:PORT; empty = no query")
    tls: bool = _opt(False, "query and retrieve from the PACS over DICOM TLS (the [tls] section)")
    window_hours: float = _opt(24.0, "how far back C-FIND looks for studies", min=0.1)
    modalities: list[str] = _opt(["CR", "DX"], "modalities asked for in the C-FIND")
    move_destination: str = _opt(
        "", "AE title the PACS sends retrieved images to; empty = listener.ae_title"
    )
    schedule: str = _opt(
        "02:00", "daily local time HH:MM at which `screener serve` rescans; empty = never"
    )


@dataclass(frozen=True)
class WorklistSettings:
    aging_hours: float = _opt(
        12.0,
        "priority = probability + hours waited / aging_hours, so a lower score is not starved",
        min=0.1,
    )


@dataclass(frozen=True)
class MetricsSettings:
    port: int = _opt(
        0, "HTTP port of /metrics (Prometheus), /healthz and /readyz; 0 = off", min=0, max=65535
    )
    host: str = _opt("127.0.0.1", "address the metrics port listens on")
    heartbeat_seconds: float = _opt(
        10.0,
        "how often each serve and worker process records in the database that it is alive "
        "(`screener status`); silent for 3 times this: taken for dead",
        min=0.5,
        max=3600,
    )


@dataclass(frozen=True)
class MonitorSettings:
    enabled: bool = _opt(
        True,
        "compare the last window_films scored films with the bundle's reference.json (drift "
        "monitoring, README: Drift monitoring); off, or no reference.json: no drift figures",
    )
    window_films: int = _opt(
        200,
        "films per rolling window (the newest scored by the loaded bundle); a drift alarm is "
        "logged at most once per window of this many new films",
        min=10,
        max=100000,
    )
    interval_seconds: float = _opt(
        60.0, "how often `screener serve` recomputes the window", min=1.0, max=86400
    )
    false_alarm_rate: float = _opt(
        0.01,
        "chance that a window of the reference's own films trips any of the four score "
        "signals: each threshold is the 1 - rate/4 quantile of its statistic over 4,000 "
        "windows resampled from the bundle's validation films (Bonferroni over the signals)",
        min=0.0001,
        max=0.5,
    )
    input_facts_threshold: float = _opt(
        0.1,
        "total-variation distance above which an input fact (size, bit depth, photometric "
        "interpretation, manufacturer) has drifted: a tenth of the window unlike the reference",
        min=0.01,
        max=1.0,
    )


@dataclass(frozen=True)
class WebSettings:
    port: int = _opt(
        0,
        "HTTP port of the radiologists' web worklist in `screener serve` (and the default of "
        "`screener web`); 0 = off",
        min=0,
        max=65535,
    )
    host: str = _opt("127.0.0.1", "address the web worklist listens on (put TLS in front of it)")
    users: list[str] = _opt(
        [],
        "who may log in: NAME:HASH entries, each made by `screener web-password NAME`",
    )
    trusted_user_header: str = _opt(
        "",
        "a reverse proxy's header naming the user it has authenticated (e.g. X-Remote-User); "
        "only behind such a proxy; empty = log in with users",
    )
    trusted_proxies: list[str] = _opt(
        [],
        "addresses or networks (CIDR) of the reverse proxies whose trusted_user_header, "
        "X-Forwarded-For and X-Forwarded-Proto are believed; empty = loopback only, and then "
        "trusted_user_header needs a loopback host",
    )
    admins: list[str] = _opt(
        [],
        "users who may send dead-lettered deliveries again and queue uploads for PACS; the others read",
    )
    session_hours: float = _opt(12.0, "a login lasts this long", min=0.1, max=720)
    idle_minutes: float = _opt(
        30.0, "a login unused this long ends (the next page asks to log in again)", min=1, max=1440
    )
    secure_cookies: bool = _opt(
        False,
        "send the session cookie only over HTTPS (Secure): set it when TLS is in front; a "
        "request a trusted proxy marks X-Forwarded-Proto: https gets Secure cookies anyway",
    )
    max_upload_mb: int = _opt(64, "largest request body accepted", min=1, max=4096)
    header_timeout_seconds: float = _opt(
        10.0,
        "a connection that has not sent a whole request's headers this long after opening "
        "(or after its next request's first byte) is closed",
        min=0.5,
        max=300,
    )
    max_connections_per_client: int = _opt(
        16,
        "connections one client address may hold open at once; more are closed at once "
        "(behind a reverse proxy every client is the proxy's address: raise it there)",
        min=1,
        max=512,
    )


@dataclass(frozen=True)
class LoggingSettings:
    format: str = _opt(
        "auto",
        "json, console, or auto (console on a terminal, else json)",
        choices=("auto", "json", "console"),
    )
    level: str = _opt("info", "log level", choices=("debug", "info", "warning", "error"))


@dataclass(frozen=True)
class Settings:
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    listener: ListenerSettings = field(default_factory=ListenerSettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    watch: WatchSettings = field(default_factory=WatchSettings)
    selection: SelectionSettings = field(default_factory=SelectionSettings)
    population: PopulationSettings = field(default_factory=PopulationSettings)
    queue: QueueSettings = field(default_factory=QueueSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    export: ExportSettings = field(default_factory=ExportSettings)
    hl7: Hl7Settings = field(default_factory=Hl7Settings)
    fhir: FhirSettings = field(default_factory=FhirSettings)
    dicomweb: DicomwebSettings = field(default_factory=DicomwebSettings)
    site: SiteSettings = field(default_factory=SiteSettings)
    rescan: RescanSettings = field(default_factory=RescanSettings)
    worklist: WorklistSettings = field(default_factory=WorklistSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    monitor: MonitorSettings = field(default_factory=MonitorSettings)
    web: WebSettings = field(default_factory=WebSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    #: The configuration file read, if any (relative paths in it resolve against its folder).
    config_file: str | None = None


def _sections() -> dict[str, type[Any]]:
    return {
        f.name: f.default_factory  # type: ignore[misc]
        for f in dataclasses.fields(Settings)
        if f.default_factory is not dataclasses.MISSING
    }


def _resolve_path(kind: Any, value: str, base: Path) -> str:
    """A path setting made absolute: ``base`` is the configuration file's folder for values
    from the file and the defaults, the current folder for the environment and command line."""
    if kind == "sqlite":
        prefix = "sqlite:///"
        rest = value[len(prefix) :] if value.startswith(prefix) else None
        if not rest or rest.startswith("/") or rest.startswith(":memory:"):
            return value
        return prefix + str(base / rest)
    if kind == "bundle" and value == "":
        from screener.errors import ModelError
        from screener.resources import shipped_bundle

        try:
            return str(shipped_bundle())
        except ModelError:
            return value
    if not value:
        return value
    return str(base / Path(value).expanduser())


def _coerce(key: str, raw: Any, kind: Any) -> Any:
    """Convert ``raw`` (from TOML, or a string from the environment / command line) to ``kind``."""
    text = raw if isinstance(raw, str) else None
    if kind in (bool, "bool"):
        if isinstance(raw, bool):
            return raw
        if text is not None and text.strip().lower() in ("true", "1", "yes", "on"):
            return True
        if text is not None and text.strip().lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{key} = {raw!r} is invalid: expected true or false")
    if kind in (int, "int"):
        if isinstance(raw, bool) or not isinstance(raw, int | str):
            raise ConfigError(f"{key} = {raw!r} is invalid: expected an integer")
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{key} = {raw!r} is invalid: expected an integer") from None
    if kind in (float, "float"):
        if isinstance(raw, bool) or not isinstance(raw, int | float | str):
            raise ConfigError(f"{key} = {raw!r} is invalid: expected a number")
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{key} = {raw!r} is invalid: expected a number") from None
    if kind in (str, "str"):
        if not isinstance(raw, str):
            raise ConfigError(f"{key} = {raw!r} is invalid: expected a string")
        return raw
    # list[str]: TOML array, or a string: a TOML array (["A", "B"]) or comma-separated (A,B)
    if isinstance(raw, str) and raw.strip().startswith("["):
        try:
            raw = tomllib.loads(f"value = {raw}")["value"]
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(
                f'{key} = {raw!r} is invalid: not a TOML array ({exc}); write ["A", "B"] or A,B'
            ) from None
    if isinstance(raw, str):
        return [p.strip() for p in raw.split(",") if p.strip()]
    if isinstance(raw, list) and all(isinstance(v, str) for v in raw):
        return list(raw)
    raise ConfigError(f"{key} = {raw!r} is invalid: expected a list of strings")


def _check(key: str, value: Any, meta: Mapping[str, Any]) -> None:
    if "choices" in meta and value not in meta["choices"]:
        allowed = ", ".join(meta["choices"])
        raise ConfigError(f"{key} = {value!r} is invalid: allowed values are {allowed}")
    if "min" in meta and value < meta["min"]:
        raise ConfigError(f"{key} = {value!r} is invalid: must be at least {meta['min']}")
    if "max" in meta and value > meta["max"]:
        raise ConfigError(f"{key} = {value!r} is invalid: must be at most {meta['max']}")
    if "pattern" in meta and not any(str(value).startswith(p) for p in meta["pattern"]):
        allowed = " or ".join(f"{p}..." for p in meta["pattern"])
        raise ConfigError(f"{key} = {value!r} is invalid: must start with {allowed}")
    if meta.get("ae_title") and not (0 < len(value) <= 16 and "\\" not in value and value.strip()):
        raise ConfigError(
            f"{key} = {value!r} is invalid: an AE title is 1-16 characters without backslash (PS3.5 6.2)"
        )


def load_settings(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build the settings from defaults, ``path`` (TOML), the environment and ``overrides``.

    ``overrides`` maps ``"section.key"`` to a value (the command line's). When ``path`` is
    None, the file ``SCREENER_CONFIG`` names is read, else the first of
    :data:`DEFAULT_CONFIG_FILES` that exists. Path settings come back absolute.
    """
    env = os.environ if environ is None else environ
    file_values: dict[str, Any] = {}
    if path is None:
        named = env.get(f"{ENV_PREFIX}CONFIG")
        path = named or next((p for p in DEFAULT_CONFIG_FILES if Path(p).is_file()), None)
    if path is not None:
        try:
            file_values = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"configuration file {str(path)!r} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(
                f"configuration file {str(path)!r} is not valid TOML: {exc}"
            ) from None

    sections = _sections()
    for name, table in file_values.items():
        if name not in sections or not isinstance(table, dict):
            raise ConfigError(f"unknown section [{name}] in {path}; known: {', '.join(sections)}")
    known_keys = {f"{s}.{f.name}" for s, cls in sections.items() for f in dataclasses.fields(cls)}
    for key in overrides or {}:
        if key not in known_keys:
            raise ConfigError(f"unknown setting {key!r}; known: {', '.join(sorted(known_keys))}")

    cwd = Path.cwd()
    base = Path(path).resolve().parent if path is not None else cwd
    built: dict[str, Any] = {}
    for name, cls in sections.items():
        table = file_values.get(name, {})
        unknown = set(table) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown setting {name}.{sorted(unknown)[0]} in {path}")
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            key = f"{name}.{f.name}"
            env_key = f"{ENV_PREFIX}{name}_{f.name}".upper()
            origin = cwd
            if overrides and key in overrides:
                raw = overrides[key]
            elif env_key in env:
                raw = env[env_key]
            elif f.name in table:
                raw, origin = table[f.name], base
            elif "path" in f.metadata:
                raw, origin = _default(f), base
            else:
                continue
            value = _coerce(key, raw, f.type)
            _check(key, value, f.metadata)
            if "path" in f.metadata:
                value = _resolve_path(f.metadata["path"], value, origin)
            values[f.name] = value
        instance = cls(**values)
        for f in dataclasses.fields(cls):  # defaults are checked too
            _check(f"{name}.{f.name}", getattr(instance, f.name), f.metadata)
        built[name] = instance
    return Settings(**built, config_file=str(Path(path).resolve()) if path is not None else None)


def writable_dir(key: str, value: str | Path) -> Path:
    """The folder a setting names, created if missing; ConfigError in one line if unusable."""
    path = Path(value).resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"{key} = {str(value)!r}: cannot create the folder ({exc.strerror}); "
            "point it at a writable place"
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{key} = {str(value)!r}: the folder is not writable by this user; "
            "fix its permissions or point it elsewhere"
        )
    return path


def _default(f: dataclasses.Field[Any]) -> Any:
    return f.default if f.default_factory is dataclasses.MISSING else f.default_factory()


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def render_default_toml() -> str:
    """The documented defaults, as ``screener.toml`` holds them."""
    lines = [
        "# screener configuration: every setting with its default.",
        "# Precedence: command line > SCREENER_<SECTION>_<KEY> environment variables > this file > defaults.",
        "# Relative paths in this file resolve against this file's folder; on the command line",
        "# and in the environment, against the current folder.",
    ]
    for name, cls in _sections().items():
        lines += ["", f"[{name}]"]
        for f in dataclasses.fields(cls):
            default = _default(f)
            lines.append(f"# {f.metadata['help']}")
            lines.append(f"{f.name} = {_toml_value(default)}")
    return "\n".join(lines) + "\n"
