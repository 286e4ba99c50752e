"""Settings: a YAML config file plus ``I2VD_*`` environment variables, validated at start."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BeforeValidator,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings import SettingsError as SourceError

from .webhooks import Webhook
from .windows import Window

ENV_PREFIX = "I2VD_"
STATUS_PAGE_NAME, STATUS_JSON_NAME = "i2vd-status.html", "i2vd-status.json"


class SettingsError(Exception):
    """A setting is missing or invalid; the message names the key and the bad value."""


def _one_or_many(value: Any) -> Any:
    # `inbox: ./inbox` and `inbox: [a, b]` both mean "these folders"; an env var may
    # also carry several folders as a JSON list or separated by the path separator.
    if isinstance(value, str):
        if value.lstrip().startswith("["):
            try:
                return json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not a valid JSON list: {exc}") from None
        return [part for part in value.split(os.pathsep) if part]
    if isinstance(value, Path):
        return [value]
    return value


class Settings(BaseSettings):
    """Every knob of the daemon. Relative paths resolve against ``base_dir``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    inbox: Annotated[list[Path], NoDecode, BeforeValidator(_one_or_many)] = Field(
        default_factory=lambda: [Path("inbox")], min_length=1
    )
    outbox: Path = Path("outbox")
    failed_dir: Path = Path("failed")
    rules_dir: Path = Path("rules")
    state_dir: Path = Path("state")
    database_url: str = ""
    # The engines this daemon claims jobs of on a shared queue (None: every engine; a
    # job whose engine is not installed here then fails with the install hint).
    engines: list[Literal["motion", "diffusion"]] | None = None
    # The GPU circuit breaker: after a device fault this daemon takes no GPU job for
    # the cool-down; after this many faults in a row it exits (7) to be restarted.
    gpu_fault_limit: int = Field(3, ge=1, le=100)
    gpu_fault_cooldown_seconds: float = Field(60.0, ge=0, le=86400)
    device: str = "auto"
    # A warm diffusion model unused for this long is unloaded, freeing GPU memory.
    model_idle_seconds: float = Field(600.0, ge=0, le=7 * 86400)
    watch_mode: Literal["auto", "events", "polling"] = "auto"
    settle_seconds: float = Field(2.0, ge=0, le=3600)
    rescan_seconds: float = Field(30.0, gt=0, le=86400)
    settle_poll_seconds: float = Field(0.2, gt=0, le=60)
    max_attempts: int = Field(3, ge=1, le=100)
    retry_delay_seconds: float = Field(10.0, ge=0, le=86400)
    lease_seconds: float = Field(120.0, gt=5, le=86400)
    # The watchdog's patience: a running job silent this long between steps (or, before
    # its first step, while a model loads) counts as hung, and the pings to systemd stop.
    stall_seconds: float = Field(300.0, gt=0, le=86400)
    model_load_seconds: float = Field(1800.0, gt=0, le=86400)
    # Motion jobs run at once (diffusion jobs: always one at a time, one GPU). 0: one
    # per eight cores this process may use, at least one.
    motion_jobs: int = Field(0, ge=0, le=64)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # When each engine may take new jobs (README "Schedule windows"); none: always.
    windows: list[Window] = Field(default_factory=list)
    # Prometheus: /metrics on metrics_host:metrics_port while running (off unless set);
    # metrics_textfile is rewritten for node_exporter's textfile collector.
    metrics_port: int | None = Field(None, ge=1, le=65535)
    metrics_host: str = "127.0.0.1"
    metrics_textfile: Path | None = None
    webhooks: list[Webhook] = Field(default_factory=list)
    # The status page people see in the share (README 'What the share shows'): its two
    # file names at the root of every inbox and of the outbox, how often at most it is
    # rewritten, and how many finished and failed images it lists.
    status_page: bool = True
    status_page_name: str = STATUS_PAGE_NAME
    status_json_name: str = STATUS_JSON_NAME
    status_page_seconds: float = Field(3.0, ge=0.5, le=3600)
    status_page_items: int = Field(20, ge=1, le=1000)
    # Directory that relative paths are resolved against: the config file's folder
    # when there is one, else the working directory.
    base_dir: Path = Field(default_factory=Path.cwd)

    def motion_job_slots(self) -> int:
        """``motion_jobs``, with 0 resolved for this host."""
        if self.motion_jobs:
            return self.motion_jobs
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return max(1, (cores or 1) // 8)

    # Each inbox's name, in the order of `inbox`: the keys of the mapping form, else
    # the folder's own path (one host). Jobs record the name, never this host's path.
    _inbox_names: list[str] | None = PrivateAttr(default=None)

    @model_validator(mode="wrap")
    @classmethod
    def _named_inboxes(cls, data: Any, handler: ModelWrapValidatorHandler[Settings]) -> Settings:
        """``inbox: {photos: /mnt/share/in, …}``: the names apart, the folders as a list."""
        names: list[str] | None = None
        if isinstance(data, dict):
            value = data.get("inbox")
            if isinstance(value, str) and value.lstrip().startswith("{"):
                try:
                    value = json.loads(value)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"inbox: not a valid JSON object: {exc}") from None
            if isinstance(value, dict):
                names = [str(name) for name in value]
                if not all(name.strip() for name in names):
                    raise ValueError("inbox: every inbox name must be a non-empty word")
                data = {**data, "inbox": list(value.values())}
        settings = handler(data)
        settings._inbox_names = names
        return settings

    @property
    def inbox_names(self) -> dict[str, Path]:
        """Each inbox's name and its folder on this host."""
        names = self._inbox_names or [str(folder) for folder in self.inbox]
        return dict(zip(names, self.inbox, strict=True))

    def inbox_name(self, folder: Path) -> str:
        """The name of the inbox ``folder`` (one of ``inbox``)."""
        return list(self.inbox_names)[self.inbox.index(folder)]

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value in ("auto", "cpu", "cuda", "mps") or (
            value.startswith("cuda:") and value[5:].isdigit()
        ):
            return value
        raise ValueError("must be auto, cpu, cuda, cuda:N or mps")

    @field_validator("status_page_name", "status_json_name")
    @classmethod
    def _plain_file_name(cls, value: str) -> str:
        # A plain visible name: the page lives at the root of each folder, and a hidden
        # or partial name would be hidden from the very people it is for.
        if not value or "/" in value or "\\" in value or value in (".", ".."):
            raise ValueError("must be a plain file name, without folders")
        if value.startswith(".") or value.endswith("~"):
            raise ValueError("must not be a hidden name (starting with a dot)")
        return value

    @property
    def status_files(self) -> frozenset[str]:
        """The status page's own files: never taken as drops, whatever the rules say.
        Reserved even with the page off, so a page left from earlier is never a job."""
        return frozenset(name.lower() for name in (self.status_page_name, self.status_json_name))

    @model_validator(mode="after")
    def _resolve_paths(self) -> Settings:
        base = self.base_dir.expanduser().resolve()
        self.base_dir = base
        self.inbox = [(base / p.expanduser()).resolve() for p in self.inbox]
        for key in ("outbox", "failed_dir", "rules_dir", "state_dir"):
            setattr(self, key, (base / Path(getattr(self, key)).expanduser()).resolve())
        if self.metrics_textfile is not None:
            self.metrics_textfile = (base / self.metrics_textfile.expanduser()).resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.state_dir / 'i2vd.db'}"
        self._check_layout()
        return self

    def _check_layout(self) -> None:
        """Refuse folder layouts that would make i2vd re-ingest its own output or take an
        image twice; the message names both folders."""
        for i, inbox in enumerate(self.inbox):
            for other in self.inbox[i + 1 :]:
                if _overlap(inbox, other):
                    raise ValueError(f"inbox folders {inbox} and {other} overlap")
            for key in ("outbox", "failed_dir", "state_dir"):
                folder: Path = getattr(self, key)
                if _overlap(inbox, folder):
                    raise ValueError(
                        f"{key} ({folder}) and the inbox {inbox} must not be inside one another"
                    )
        if len(self.status_files) < 2:
            raise ValueError("status_page_name and status_json_name must be different names")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment variables beat the config file, which is passed as init values.
        return (env_settings, init_settings)

    @property
    def work_dir(self) -> Path:
        """Scratch space for encodes in progress; wiped of stale files at start."""
        return self.state_dir / "work"


def _overlap(a: Path, b: Path) -> bool:
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def load_settings(config_file: Path | None = None) -> Settings:
    """Build settings from ``config_file`` (or ``I2VD_CONFIG``) and the environment."""
    if config_file is None and os.environ.get(f"{ENV_PREFIX}CONFIG"):
        config_file = Path(os.environ[f"{ENV_PREFIX}CONFIG"])
    values: dict[str, Any] = {}
    if config_file is not None:
        values = _read_config_file(config_file)
        values.setdefault("base_dir", config_file.resolve().parent)
    try:
        return Settings(**values)
    except ValidationError as exc:
        raise SettingsError(_describe(exc, config_file)) from None
    except SourceError as exc:  # an environment variable that cannot be parsed at all
        raise SettingsError(f"invalid settings: {exc}") from None


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SettingsError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"config file {path} must hold a mapping of setting: value")
    return data


def _describe(exc: ValidationError, config_file: Path | None) -> str:
    lines = ["invalid settings:"]
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"])
        if not key:  # a check across several settings: its message names them
            lines.append(f"  {err['msg'].removeprefix('Value error, ')}")
            continue
        env = ENV_PREFIX + key.upper().replace(".", "__")
        origin = f"in {config_file} or {env}" if config_file else f"from {env} or the default"
        value = err.get("input")
        shown = "" if isinstance(value, dict) else f" = {value!r}"
        if err["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown setting ({origin}); see README 'Settings'")
        else:
            lines.append(f"  {key}{shown} ({origin}): {err['msg']}")
    return "\n".join(lines)
