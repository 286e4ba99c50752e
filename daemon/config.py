"""Settings: a YAML config file plus ``I2VD_*`` environment variables, validated at start."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    ModelWrapValidatorHandler,
    PlainSerializer,
    PlainValidator,
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

# The pieces the admin commands' light reader shares live in queue_settings, so the
# two readers cannot drift; SettingsError is re-exported for `from .config import`.
from .queue_settings import (
    DEFAULT_FAILED_DIR,
    DEFAULT_INBOX,
    DEFAULT_OUTBOX,
    DEFAULT_RULES_DIR,
    DEFAULT_STATE_DIR,
    ENV_PREFIX,
    SettingsError,
    check_folders,
    config_file_from_env,
    config_values,
    default_database_url,
    name_inboxes,
    one_or_many,
    resolve_base,
    resolve_path,
    split_inbox_names,
)
from .webhooks import Webhook
from .windows import Window

__all__ = ["ENV_PREFIX", "Settings", "SettingsError", "load_settings"]

STATUS_PAGE_NAME, STATUS_JSON_NAME = "i2vd-status.html", "i2vd-status.json"
# A window is checked by its own validator (windows.py imports no pydantic); its
# ValueError names the key and the bad value, and pydantic adds `windows.N`. Dumped
# as the mapping it was read from.
CheckedWindow = Annotated[
    Window,
    PlainValidator(Window.from_mapping),
    PlainSerializer(dataclasses.asdict, return_type=dict[str, Any]),
]


class Settings(BaseSettings):
    """Every knob of the daemon. Relative paths resolve against ``base_dir``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    inbox: Annotated[list[Path], NoDecode, BeforeValidator(one_or_many)] = Field(
        default_factory=lambda: [DEFAULT_INBOX], min_length=1
    )
    outbox: Path = DEFAULT_OUTBOX
    failed_dir: Path = DEFAULT_FAILED_DIR
    rules_dir: Path = DEFAULT_RULES_DIR
    state_dir: Path = DEFAULT_STATE_DIR
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
    windows: list[CheckedWindow] = Field(default_factory=list)
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
        if isinstance(data, dict) and "inbox" in data:
            names, folders = split_inbox_names(data["inbox"])
            if names is not None:
                data = {**data, "inbox": folders}
        settings = handler(data)
        settings._inbox_names = names
        return settings

    @property
    def inbox_names(self) -> dict[str, Path]:
        """Each inbox's name and its folder on this host."""
        return name_inboxes(self._inbox_names, self.inbox)

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
        base = resolve_base(self.base_dir)
        self.base_dir = base
        self.inbox = [resolve_path(base, p) for p in self.inbox]
        for key in ("outbox", "failed_dir", "rules_dir", "state_dir"):
            setattr(self, key, resolve_path(base, getattr(self, key)))
        if self.metrics_textfile is not None:
            self.metrics_textfile = resolve_path(base, self.metrics_textfile)
        if not self.database_url:
            self.database_url = default_database_url(self.state_dir)
        check_folders(self.inbox, self.outbox, self.failed_dir, self.state_dir)
        if len(self.status_files) < 2:
            raise ValueError("status_page_name and status_json_name must be different names")
        return self

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


def load_settings(config_file: Path | None = None) -> Settings:
    """Build settings from ``config_file`` (or ``I2VD_CONFIG``) and the environment."""
    config_file = config_file_from_env(config_file)
    values = config_values(config_file)
    try:
        return Settings(**values)
    except ValidationError as exc:
        raise SettingsError(_describe(exc, config_file)) from None
    except SourceError as exc:  # an environment variable that cannot be parsed at all
        raise SettingsError(f"invalid settings: {exc}") from None


def _describe(exc: ValidationError, config_file: Path | None) -> str:
    lines = ["invalid settings:"]
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"])
        if not key:  # a check across several settings: its message names them
            lines.append(f"  {err['msg'].removeprefix('Value error, ')}")
            continue
        env = _env_name(err["loc"])
        origin = f"in {config_file} or {env}" if config_file else f"from {env} or the default"
        value = err.get("input")
        shown = "" if isinstance(value, dict) else f" = {value!r}"
        if err["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown setting ({origin}); see README 'Settings'")
        else:
            message = err["msg"].removeprefix("Value error, ")
            lines.append(f"  {key}{shown} ({origin}): {message}")
    return "\n".join(lines)


def _env_name(loc: tuple[int | str, ...]) -> str:
    """The variable that sets the value at ``loc``: ``I2VD_<A>__<B>`` for nested keys;
    an item of a list (``windows.0``) has none of its own, only the list's variable."""
    keys: list[str] = []
    for part in loc:
        if not isinstance(part, str):
            break
        keys.append(part.upper())
    return ENV_PREFIX + "__".join(keys)
