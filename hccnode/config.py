"""Node configuration: one TOML file, every key with a default.

`load(path)` returns a `Config`; with no file the defaults apply, so `hccnode serve` runs
on a fresh machine. Unknown sections or keys and wrong value types raise `ConfigError`
naming the key, so a typo never passes silently.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

DEFAULT_FILE = "hccnode.toml"
AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE VR: no backslash, <= 16 chars


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the key."""


@dataclass
class NodeSection:
    """The DICOM listener (SCP)."""

    ae_title: str = "HCCNODE"
    host: str = "127.0.0.1"
    port: int = 11112
    data_dir: str = "./hccnode-data"
    max_associations: int = 8
    # Calling AEs allowed to associate: "AE" (any host) or "AE@host". Empty: any AE.
    allowed: list[str] = field(default_factory=list)
    # Network timeouts in seconds (ACSE, DIMSE, network idle).
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    network_timeout: float = 60.0
    # What this process runs (`hccnode serve --role`): "receiver" (DICOM and HL7 listeners),
    # "worker" (the stable-study watcher and the analysis workers), "forwarder" (the outbox), or
    # "all" of them. The status page runs in every role.
    role: str = "all"
    # Largest P-DATA-TF PDU we accept, in bytes (0: no limit); senders fragment to it.
    max_pdu: int = 131072
    # Processes accepting DICOM associations (sharing the listening sockets): concurrent senders
    # use that many cores. 2: the two cores of the smallest host the node is sized for; one
    # association gains nothing from more, and each process adds about 110 MB (peak RSS measured).
    receiver_processes: int = 2


ROLES = ("all", "receiver", "worker", "forwarder")


@dataclass
class StudySection:
    """When a study counts as complete."""

    stable_seconds: float = 5.0


@dataclass
class WorkerSection:
    """The analysis workers and their durable job queue."""

    processes: int = 0  # 0: one per core
    # Added to the analysis processes' nice value: receiving (a scanner waits for each C-STORE
    # response) and sending outputs come first when they compete for the processors.
    nice: int = 10
    lease_seconds: float = 60.0
    max_attempts: int = 3
    poll_seconds: float = 0.5


@dataclass
class DicomWebOptions:
    """One DICOMweb destination: `[forward.dicomweb."URL"]`, URL exactly as in `destinations`.
    Credentials live in files named here, never in the configuration itself."""

    ca_bundle: str = ""         # PEM bundle that signs the server's certificate; empty: the system's
    token_file: str = ""        # a file holding a bearer token (one line)
    basic_auth_file: str = ""   # a file holding "user:password" (one line)
    timeout: float = 60.0       # seconds to connect, and to wait for each answer


@dataclass
class ForwardSection:
    """The outbox and its C-STORE SCU / DICOMweb STOW-RS client."""

    # Destinations, each "AE@host:port" (C-STORE) or a DICOMweb base URL "https://host/dicom-web"
    # (STOW-RS); analysis outputs go to every one of them.
    destinations: list[str] = field(default_factory=list)
    dicomweb: dict[str, DicomWebOptions] = field(default_factory=dict)
    ae_title: str = "HCCNODE"  # calling AE title when sending
    retry_base_seconds: float = 5.0
    retry_max_seconds: float = 600.0
    max_attempts: int = 50
    poll_seconds: float = 0.5
    # Loops sending at once, each with its own association to a destination: outputs queued while
    # a large one is being sent (the SR and SEG behind a 200-frame ECV map) need not wait for it.
    senders: int = 2
    # Send over TLS (with [tls] certificate/private_key as client certificate when set,
    # verifying the peer against [tls] ca_certificates and its host name).
    tls: bool = False

    def dicomweb_options(self, url: str) -> DicomWebOptions:
        """The options of DICOMweb destination `url` (defaults when it has no table)."""
        key = url.strip().rstrip("/")
        return next((o for k, o in self.dicomweb.items() if k.strip().rstrip("/") == key), DicomWebOptions())


@dataclass
class HL7Section:
    """The MLLP listener for HL7 v2 lab results."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 2575
    allowed_hosts: list[str] = field(default_factory=list)


@dataclass
class TLSSection:
    """DICOM over TLS (PS3.15 Annex B.9, BCP 195 profile: TLS 1.2 or newer). Off by default."""

    enabled: bool = False
    port: int = 2762                     # the TLS listener (2762: DICOM over TLS)
    certificate: str = ""                # PEM: this node's certificate (chain)
    private_key: str = ""                # PEM: its key
    ca_certificates: str = ""            # PEM bundle trusted to sign peers' certificates
    require_client_certificate: bool = False  # mutual TLS on the listener
    keep_plain_listener: bool = True     # false: only the TLS port accepts associations


@dataclass
class PhasesSection:
    """Contrast-phase / series-kind detection (hccnode.imaging.phases)."""

    rules_file: str = ""  # empty: the packaged hccnode/data/phase_rules.toml


@dataclass
class StatusSection:
    """The read-only status page and JSON health endpoint (hccnode.status)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 11180
    allow_remote: bool = False       # the page has no login: a non-loopback host needs this set
    recent_studies: int = 20         # studies shown, newest first
    lab_silent_hours: float = 24.0   # /health degraded after this long without an HL7 message; 0: never


@dataclass
class PriorsSection:
    """Baseline MRI from the PACS for a follow-up (paper 003 pairing; hccnode.net.priors)."""

    enabled: bool = False           # fetch automatically when an MR follow-up is analysed
    pacs: str = ""                  # "AE@host:port" of the Query/Retrieve SCP; empty: first [forward] destination
    retrieve: str = "auto"          # "move" (C-MOVE to node.ae_title), "get" (C-GET), "auto" (move, else get)
    tolerance_days: float = 7.0     # scheduling margin around paper 003's interval (not published there)
    timeout: float = 120.0          # seconds for association set-up and for each DIMSE response


RETRIEVE_METHODS = ("move", "get", "auto")


@dataclass
class AdcSection:
    """The stored unit of ADC maps without a Real World Value Mapping, per Manufacturer (0008,0070),
    e.g. units = { "ACME" = "1e-6 mm2/s" }. Wins over the packaged vendor conventions
    (hccnode/data/adc_units.toml) and is still checked against the map's tissue values
    (hccnode.imaging.adc_unit)."""

    units: dict[str, str] = field(default_factory=dict)


@dataclass
class StoreSection:
    """Where the node's database is: empty for the embedded SQLite file DATA_DIR/hccnode.db, or a
    PostgreSQL URL "postgresql://user@host:port/database" (password in ~/.pgpass or PGPASSFILE,
    never here) for a site whose hosts share one database."""

    url: str = ""


@dataclass
class LogSection:
    level: str = "INFO"
    file: str = ""  # empty: standard error


@dataclass
class Config:
    node: NodeSection = field(default_factory=NodeSection)
    study: StudySection = field(default_factory=StudySection)
    worker: WorkerSection = field(default_factory=WorkerSection)
    forward: ForwardSection = field(default_factory=ForwardSection)
    hl7: HL7Section = field(default_factory=HL7Section)
    tls: TLSSection = field(default_factory=TLSSection)
    phases: PhasesSection = field(default_factory=PhasesSection)
    priors: PriorsSection = field(default_factory=PriorsSection)
    status: StatusSection = field(default_factory=StatusSection)
    adc: AdcSection = field(default_factory=AdcSection)
    store: StoreSection = field(default_factory=StoreSection)
    log: LogSection = field(default_factory=LogSection)
    source: str = "defaults"  # where the values came from

    @property
    def data_dir(self) -> Path:
        return Path(self.node.data_dir).expanduser().resolve()

    @property
    def db_path(self) -> Path:
        return self.data_dir / "hccnode.db"

    def worker_processes(self) -> int:
        return self.worker.processes or (os.cpu_count() or 1)


def _check_type(key: str, value: Any, hint: Any) -> Any:
    """Return `value` converted to the type `hint`, or raise ConfigError naming `key`."""
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (str, int, float, bool):
        if type(value) is not hint:
            raise ConfigError(
                f"{key}: expected {hint.__name__}, got {type(value).__name__} ({value!r})"
            )
        return value
    if getattr(hint, "__origin__", None) is list:
        (item,) = hint.__args__
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list of {item.__name__}, got {value!r}")
        return [_check_type(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if getattr(hint, "__origin__", None) is dict:
        _, item = hint.__args__
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table of {item.__name__}, got {value!r}")
        return {k: _check_type(f"{key}[{k!r}]", v, item) for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {value!r}")
        return _fill(hint(), value, key)
    raise ConfigError(f"{key}: unsupported type {hint}")  # pragma: no cover


def from_dict(data: dict[str, Any], source: str = "<dict>") -> Config:
    """Build a Config from parsed TOML, checking every key and type."""
    cfg = Config(source=source)
    sections = {f.name: f for f in dataclasses.fields(Config) if f.name != "source"}
    for name, values in data.items():
        if name not in sections:
            raise ConfigError(f"unknown section [{name}] (known: {', '.join(sections)})")
        if not isinstance(values, dict):
            raise ConfigError(f"[{name}] must be a table")
        _fill(getattr(cfg, name), values, name)
    _validate(cfg)
    return cfg


def _fill(section: Any, values: dict[str, Any], name: str) -> Any:
    """Set `values` on the dataclass `section` (the table `name`), checking every key and type."""
    hints = get_type_hints(type(section))
    for key, value in values.items():
        if key not in hints:
            known = ", ".join(hints)
            raise ConfigError(f"unknown key {name}.{key} (known in [{name}]: {known})")
        setattr(section, key, _check_type(f"{name}.{key}", value, hints[key]))
    return section


def _validate(cfg: Config) -> None:
    for key, ae in (("node.ae_title", cfg.node.ae_title), ("forward.ae_title", cfg.forward.ae_title)):
        if not AE_RE.match(ae) or not ae.strip():
            raise ConfigError(f"{key}: {ae!r} is not a valid AE title (1-16 characters, no backslash)")
    for key, port in (("node.port", cfg.node.port), ("hl7.port", cfg.hl7.port), ("status.port", cfg.status.port)):
        if not 0 <= port <= 65535:
            raise ConfigError(f"{key}: {port} is not a TCP port")
    if cfg.node.role not in ROLES:
        raise ConfigError(f"node.role: {cfg.node.role!r} is not one of {', '.join(ROLES)}")
    for i, entry in enumerate(cfg.node.allowed):
        ae = entry.split("@", 1)[0]
        if not AE_RE.match(ae) or not ae.strip():
            raise ConfigError(f"node.allowed[{i}]: {entry!r} is not 'AE' or 'AE@host'")
    for i, dest in enumerate(cfg.forward.destinations):
        try:
            check_dicomweb_url(dest) if is_dicomweb(dest) else parse_destination(dest)
        except ValueError as exc:
            raise ConfigError(f"forward.destinations[{i}]: {exc}") from None
    _validate_dicomweb(cfg.forward)
    if cfg.tls.enabled or cfg.forward.tls:
        needed = ["ca_certificates"] if cfg.forward.tls and not cfg.tls.enabled else []
        if cfg.tls.enabled:
            needed = ["certificate", "private_key"] + (["ca_certificates"] if cfg.tls.require_client_certificate else [])
        for key in needed:
            value = getattr(cfg.tls, key)
            if not value:
                raise ConfigError(f"tls.{key}: required when TLS is used")
            if not Path(value).expanduser().is_file():
                raise ConfigError(f"tls.{key}: {value!r} is not a readable file")
    if not 0 <= cfg.tls.port <= 65535:
        raise ConfigError(f"tls.port: {cfg.tls.port} is not a TCP port")
    if not cfg.status.allow_remote and not is_loopback_host(cfg.status.host):
        raise ConfigError(f"status.host: {cfg.status.host!r} is not a loopback address (127.0.0.0/8, ::1, localhost);"
                          " the status page has no login, set status.allow_remote = true to serve it there")
    if cfg.status.recent_studies < 1:
        raise ConfigError("status.recent_studies: must be at least 1")
    if cfg.status.lab_silent_hours < 0:
        raise ConfigError("status.lab_silent_hours: must not be negative")
    if cfg.node.max_associations < 1:
        raise ConfigError("node.max_associations: must be at least 1")
    if cfg.node.receiver_processes < 1:
        raise ConfigError("node.receiver_processes: must be at least 1")
    if not 0 <= cfg.worker.nice <= 19:
        raise ConfigError("worker.nice: must be 0 (the node's own priority) to 19 (the lowest)")
    if cfg.forward.senders < 1:
        raise ConfigError("forward.senders: must be at least 1")
    if cfg.study.stable_seconds < 0:
        raise ConfigError("study.stable_seconds: must not be negative")
    if cfg.priors.pacs:
        try:
            parse_destination(cfg.priors.pacs)
        except ValueError as exc:
            raise ConfigError(f"priors.pacs: {exc}") from None
    elif cfg.priors.enabled and not dimse_destinations(cfg.forward):
        raise ConfigError("priors.pacs: required when priors.enabled is true and [forward] destinations has no"
                          " AE@host:port")
    if cfg.priors.retrieve not in RETRIEVE_METHODS:
        raise ConfigError(f"priors.retrieve: {cfg.priors.retrieve!r} is not one of {', '.join(RETRIEVE_METHODS)}")
    if cfg.priors.tolerance_days < 0:
        raise ConfigError("priors.tolerance_days: must not be negative")
    if cfg.priors.timeout <= 0:
        raise ConfigError("priors.timeout: must be positive")
    for name, unit in cfg.adc.units.items():
        from hccnode.imaging.adc_unit import parse_unit

        try:
            parse_unit(unit)
        except ValueError as exc:
            raise ConfigError(f"adc.units[{name!r}]: {exc}") from None
        if not name.strip():
            raise ConfigError("adc.units: a Manufacturer name must not be empty")
    from hccnode.store.engine import UrlError, check_url

    try:
        check_url(cfg.store.url)
    except UrlError as exc:
        raise ConfigError(f"store.url: {exc}") from None
    if cfg.log.level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"log.level: {cfg.log.level!r} is not DEBUG, INFO, WARNING or ERROR")


def _validate_dicomweb(fwd: ForwardSection) -> None:
    urls = {d.strip().rstrip("/") for d in fwd.destinations if is_dicomweb(d)}
    for url, opts in fwd.dicomweb.items():
        key = f"forward.dicomweb[{url!r}]"
        if url.strip().rstrip("/") not in urls:
            raise ConfigError(f"{key}: not one of forward.destinations")
        if opts.token_file and opts.basic_auth_file:
            raise ConfigError(f"{key}: token_file and basic_auth_file exclude each other")
        for name in ("ca_bundle", "token_file", "basic_auth_file"):
            value = getattr(opts, name)
            if value and not Path(value).expanduser().is_file():
                raise ConfigError(f"{key}.{name}: {value!r} is not a readable file")
        if opts.timeout <= 0:
            raise ConfigError(f"{key}.timeout: must be positive")
        parts = urllib.parse.urlsplit(url.strip())
        if (opts.token_file or opts.basic_auth_file) and parts.scheme == "http" and not is_loopback_host(parts.hostname or ""):
            raise ConfigError(f"{key}: credentials would cross the network in the clear; use https")


def is_dicomweb(text: str) -> bool:
    """True when a destination is a DICOMweb base URL rather than AE@host:port."""
    return text.strip().lower().startswith(("http://", "https://"))


def check_dicomweb_url(text: str) -> str:
    """A DICOMweb base URL ('https://host[:port]/path'), without credentials, query or fragment;
    ValueError naming what is wrong (the URL is shown only when it holds no credentials)."""
    parts = urllib.parse.urlsplit(text.strip())
    if parts.username is not None or parts.password is not None:
        raise ValueError("a DICOMweb URL must not hold credentials: name a token_file or basic_auth_file"
                         " in [forward.dicomweb.\"URL\"]")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{text!r} is not an http(s):// URL")
    if parts.query or parts.fragment:
        raise ValueError(f"{text!r}: a DICOMweb base URL has no query or fragment")
    try:
        parts.port
    except ValueError:
        raise ValueError(f"{text!r}: the port is not a TCP port") from None
    return text.strip().rstrip("/")


def dimse_destinations(fwd: ForwardSection) -> list[str]:
    """The AE@host:port destinations (the ones that can also answer C-FIND, C-MOVE, C-GET)."""
    return [d for d in fwd.destinations if not is_dicomweb(d)]


def is_loopback_host(host: str) -> bool:
    """True for 'localhost' and loopback IP literals; a name that needs DNS is not trusted to be."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Destination:
    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def parse_destination(text: str) -> Destination:
    """Parse 'AE@host:port' (IPv6 hosts in brackets: 'AE@[::1]:104')."""
    m = re.match(r"^(?P<ae>[^@]+)@(?P<host>\[[^\]]+\]|[^:]+):(?P<port>\d+)$", text.strip())
    if not m or not AE_RE.match(m["ae"]):
        raise ValueError(f"{text!r} is not AE@host:port")
    port = int(m["port"])
    if not 0 < port <= 65535:
        raise ValueError(f"{text!r}: {port} is not a TCP port")
    return Destination(m["ae"], m["host"].strip("[]"), port)


def load(path: str | os.PathLike | None = None) -> Config:
    """Load the configuration from `path`, else ./hccnode.toml if present, else defaults."""
    if path is None:
        path = os.environ.get("HCCNODE_CONFIG") or (DEFAULT_FILE if Path(DEFAULT_FILE).exists() else None)
    if path is None:
        return Config()
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such configuration file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    try:
        return from_dict(data, source=str(p))
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from None
