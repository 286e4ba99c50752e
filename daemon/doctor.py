"""``i2vd doctor``: check what a new install gets wrong, and say how to fix each.

Each check returns findings: ``ok``, ``warn`` (works, but probably not as meant) or
``fail`` (something will not work). Every finding that is not ``ok`` carries the fix
in plain words. The only verb allowed to import torch: it asks the GPU for its memory.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .config import Settings

Level = Literal["ok", "warn", "fail"]
GIB = 2**30
# Below this, a diffusion clip or the queue's next write may not fit.
LOW_SPACE_FAIL, LOW_SPACE_WARN = 1 * GIB, 5 * GIB
LOW_GPU_MEMORY = 2 * GIB
INOTIFY_LIMIT = Path("/proc/sys/fs/inotify/max_user_watches")


@dataclass(frozen=True)
class Finding:
    check: str
    level: Level
    message: str
    fix: str = ""


def run_checks(settings: Settings) -> list[Finding]:
    findings: list[Finding] = []
    for check in CHECKS:
        try:
            findings.extend(check(settings))
        except Exception as exc:  # a check that breaks is itself a finding, not a crash
            name = check.__name__.removeprefix("check_")
            findings.append(
                Finding(
                    name,
                    "fail",
                    f"the check itself failed: {type(exc).__name__}: {exc}",
                    "report this with the output of `i2vd doctor`",
                )
            )
    return findings


def healthy(findings: list[Finding]) -> bool:
    return all(f.level != "fail" for f in findings)


def format_findings(findings: list[Finding]) -> str:
    mark = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}
    lines = []
    for f in findings:
        lines.append(f"{mark[f.level]} {f.check}: {f.message}")
        if f.fix and f.level != "ok":
            lines.append(f"     fix: {f.fix}")
    fails = sum(f.level == "fail" for f in findings)
    warns = sum(f.level == "warn" for f in findings)
    lines.append(
        "nothing is wrong" if not fails and not warns else f"{fails} problem(s), {warns} warning(s)"
    )
    return "\n".join(lines)


# --- the checks ----------------------------------------------------------------------


def check_ffmpeg(settings: Settings) -> Iterator[Finding]:
    import numpy as np

    from .video import VideoError, encode_mp4, ffmpeg_exe, verify

    try:
        exe = ffmpeg_exe()
    except (RuntimeError, OSError) as exc:
        yield Finding(
            "ffmpeg",
            "fail",
            f"no ffmpeg found ({exc})",
            "pip install --force-reinstall imageio-ffmpeg (it ships one), or point "
            "IMAGEIO_FFMPEG_EXE at an ffmpeg with libx264",
        )
        return
    frames = [np.full((64, 64, 3), 40 * i, dtype=np.uint8) for i in range(4)]
    with tempfile.TemporaryDirectory(prefix="i2vd-doctor-") as folder:
        out = Path(folder) / "probe.mp4"
        try:
            encode_mp4(frames, out, fps=4)
            verify(out, 64, 64, 4, 4)
        except (VideoError, OSError) as exc:
            yield Finding(
                "ffmpeg",
                "fail",
                f"{exe} cannot encode H.264: {exc}",
                "use an ffmpeg built with libx264: pip install --force-reinstall "
                "imageio-ffmpeg, or set IMAGEIO_FFMPEG_EXE to one",
            )
            return
    yield Finding("ffmpeg", "ok", f"{exe} encodes H.264")


def _diffusion_rules(settings: Settings) -> list[tuple[str, str | None]]:
    from .ruleset import RuleSet

    rules = RuleSet(settings.rules_dir)
    rules.reload()
    return [(r.rule.name, r.rule.model) for r in rules.snapshot if r.rule.engine == "diffusion"]


def check_rules(settings: Settings) -> Iterator[Finding]:
    from .rules_check import check_rules as check

    if not settings.rules_dir.is_dir():
        yield Finding(
            "rules",
            "fail",
            f"rules folder {settings.rules_dir} does not exist",
            f"create it (mkdir -p {settings.rules_dir}) and put rule files in it, or set rules_dir",
        )
        return
    report = check(settings.rules_dir)
    if report.problems:
        yield Finding(
            "rules",
            "fail",
            f"{report.summary()}; first: {report.problems[0]}",
            f"run `i2vd rules check {settings.rules_dir}` and fix each line it prints",
        )
    elif not report.rule_files:
        yield Finding(
            "rules",
            "warn",
            f"no rule files in {settings.rules_dir}: every image stays in the inbox",
            "add a rule (README 'Rules'); the repository's rules/ has examples",
        )
    else:
        yield Finding("rules", "ok", report.summary())


def check_gpu(settings: Settings) -> Iterator[Finding]:
    diffusion = _diffusion_rules(settings) if settings.rules_dir.is_dir() else []
    if importlib.util.find_spec("torch") is None:
        level: Level = "fail" if diffusion else "ok"
        yield Finding(
            "gpu",
            level,
            "torch is not installed: only the motion engine can run",
            "pip install 'i2vd[diffusion]' (GPU hosts: the CUDA build of torch first)",
        )
        return
    import torch  # only here: the other verbs must stay light

    wants_cuda = settings.device.startswith("cuda")
    if not torch.cuda.is_available():
        if wants_cuda:
            yield Finding(
                "gpu",
                "fail",
                f"device is {settings.device} but torch sees no CUDA GPU "
                f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'})",
                "install the NVIDIA driver and a CUDA build of torch, check nvidia-smi, and "
                "under systemd keep the DeviceAllow= lines; or set device: cpu",
            )
        elif diffusion and settings.device == "auto":
            yield Finding(
                "gpu",
                "warn",
                "no CUDA GPU: diffusion rules will run on the CPU (very slowly)",
                "install the NVIDIA driver and a CUDA build of torch, or use motion rules",
            )
        else:
            yield Finding("gpu", "ok", f"torch {torch.__version__}, device {settings.device}")
        return
    indices = range(torch.cuda.device_count())
    if settings.device.startswith("cuda:"):
        indices = range(int(settings.device[5:]), int(settings.device[5:]) + 1)
    for index in indices:
        if index >= torch.cuda.device_count():
            yield Finding(
                "gpu",
                "fail",
                f"device is cuda:{index} but only {torch.cuda.device_count()} GPU(s) are visible",
                "set device to an existing GPU, or check CUDA_VISIBLE_DEVICES",
            )
            continue
        free, total = torch.cuda.mem_get_info(index)
        name = torch.cuda.get_device_name(index)
        text = f"cuda:{index} {name}: {free / GIB:.1f} of {total / GIB:.1f} GiB free"
        if free < LOW_GPU_MEMORY:
            yield Finding("gpu", "warn", text, "stop what else runs on this GPU (nvidia-smi)")
        else:
            yield Finding("gpu", "ok", text)


def check_models(settings: Settings) -> Iterator[Finding]:
    if not settings.rules_dir.is_dir():
        return
    for rule, model in _diffusion_rules(settings):
        if not model:
            continue
        yield _model_finding(settings, rule, model)


def _model_finding(settings: Settings, rule: str, model: str) -> Finding:
    path = Path(model).expanduser()
    local = path.is_absolute() or model.startswith(("./", "../", "~")) or model.count("/") > 1
    folder = path if path.is_absolute() else settings.base_dir / path
    if local or folder.is_dir():
        if (folder / "model_index.json").is_file():
            return Finding("model", "ok", f"rule {rule}: {folder}")
        what = "has no model_index.json" if folder.is_dir() else "does not exist"
        return Finding(
            "model",
            "fail",
            f"rule {rule}: model folder {folder} {what}",
            f"copy the whole pipeline there (e.g. `hf download {model} --local-dir {folder}`) "
            "or fix the rule's model",
        )
    if importlib.util.find_spec("huggingface_hub") is None:
        return Finding(
            "model",
            "fail",
            f"rule {rule}: {model} is a hub id, and huggingface_hub is missing",
            "pip install 'i2vd[diffusion]'",
        )
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(model, "model_index.json")
    if isinstance(cached, str):
        return Finding("model", "ok", f"rule {rule}: {model} is in the hub cache")
    return Finding(
        "model",
        "fail",
        f"rule {rule}: {model} is not in the Hugging Face cache "
        f"({os.environ.get('HF_HOME') or '~/.cache/huggingface'}), so it needs the network",
        f"run `hf download {model}` as the service user (with the same HF_HOME), or point "
        "the rule's model at a local folder",
    )


def check_inotify(settings: Settings) -> Iterator[Finding]:
    if settings.watch_mode == "polling" or not INOTIFY_LIMIT.exists():
        return
    limit = int(INOTIFY_LIMIT.read_text().strip())
    folders = 0
    for root in (*settings.inbox, settings.rules_dir):
        for _dirpath, _dirs, _files in os.walk(root):
            folders += 1
            if folders > limit:
                break
    fix = (
        f"raise it: echo fs.inotify.max_user_watches={max(524288, folders * 4)} > "
        "/etc/sysctl.d/60-i2vd.conf && sysctl --system; or set watch_mode: polling"
    )
    text = f"{folders} folder(s) to watch, inotify allows {limit} per user"
    if folders > limit:
        yield Finding("inotify", "fail", text, fix)
    elif folders > limit // 2:
        yield Finding("inotify", "warn", text + " (other programs share the limit)", fix)
    else:
        yield Finding("inotify", "ok", text)


def check_folders(settings: Settings) -> Iterator[Finding]:
    named = [
        *(("inbox", p) for p in settings.inbox),
        ("outbox", settings.outbox),
        ("failed_dir", settings.failed_dir),
        ("state_dir", settings.state_dir),
    ]
    for key, folder in named:
        yield _writable(key, folder)
    for key, folder in (("outbox", settings.outbox), ("state_dir", settings.state_dir)):
        existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
        if existing is None:
            continue
        free = shutil.disk_usage(existing).free
        text = f"{free / GIB:.1f} GiB free for {key} ({folder})"
        fix = f"free space on the file system of {existing}, or move {key} elsewhere"
        if free < LOW_SPACE_FAIL:
            yield Finding("space", "fail", text, fix)
        elif free < LOW_SPACE_WARN:
            yield Finding("space", "warn", text, fix)
        else:
            yield Finding("space", "ok", text)


def _writable(key: str, folder: Path) -> Finding:
    user = _user()
    if not folder.exists():
        parent = next((p for p in folder.parents if p.exists()), None)
        if parent is not None and parent.is_dir() and os.access(parent, os.W_OK | os.X_OK):
            return Finding("folders", "ok", f"{key} {folder} will be created at start")
        return Finding(
            "folders",
            "fail",
            f"{key} {folder} does not exist and cannot be created by {user}",
            f"mkdir -p {folder} && chown {user} {folder}",
        )
    if not folder.is_dir():
        return Finding(
            "folders",
            "fail",
            f"{key} {folder} is a file, not a folder",
            f"move the file away, or set {key} to a folder",
        )
    try:
        fd, probe = tempfile.mkstemp(prefix=".i2vd-doctor-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return Finding(
            "folders",
            "fail",
            f"{key} {folder} is not writable by {user} ({exc.strerror})",
            f"chown {user} {folder} (or add {user} to its group and chmod g+w); under systemd "
            "also list it in ReadWritePaths=",
        )
    return Finding("folders", "ok", f"{key} {folder} is writable")


def _user() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def check_database(settings: Settings) -> Iterator[Finding]:
    from sqlalchemy import create_engine, make_url, text
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    url = settings.database_url
    try:
        parsed = make_url(url)
        shown = parsed.render_as_string(hide_password=True)
    except ArgumentError:
        yield Finding(
            "database",
            "fail",
            f"database_url {url!r} is not a database URL",
            "write it as e.g. postgresql+psycopg://user@host/i2vd or sqlite:///path",
        )
        return
    # The file as SQLAlchemy reads the URL (percent-decoded: the default URL of a
    # state_dir with % or ? in its name has them escaped).
    file = parsed.database if parsed.drivername.startswith("sqlite") else None
    if file and file != ":memory:" and not Path(file).exists():
        parent = Path(file).parent
        level: Level = "ok" if parent.is_dir() or not parent.exists() else "fail"
        yield Finding(
            "database", level, f"{shown} will be created at start", f"make {parent} a folder"
        )
        return
    try:
        engine = create_engine(url)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except ImportError as exc:
        yield Finding(
            "database",
            "fail",
            f"the driver for {shown} is not installed ({exc})",
            "pip install 'psycopg[binary]' for PostgreSQL",
        )
        return
    except SQLAlchemyError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        yield Finding(
            "database",
            "fail",
            f"cannot reach {shown}: {first}",
            "check database_url (host, port, user, database) and that the server runs and "
            "accepts this host",
        )
        return
    yield Finding("database", "ok", f"{shown} answers")


CHECKS: tuple[Callable[[Settings], Iterator[Finding]], ...] = (
    check_folders,
    check_database,
    check_rules,
    check_ffmpeg,
    check_inotify,
    check_gpu,
    check_models,
)
