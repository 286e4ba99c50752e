"""Finding a model, choosing device, dtype and weights variant, and loading it.

The model's family is read from its ``model_index.json`` before any weights are touched,
so an unsupported model fails at once with a clear message. Where a hub model comes from
is decided up front (``hub.py``: the cache, or the hub if it can be reached), so a host
without the weights and without a network fails in seconds instead of sitting through
the hub client's retries. Loading goes through ``DiffusionPipeline.from_pretrained``
exactly as a user would, so ``HF_HUB_OFFLINE``, the hub cache and tokens behave as they
do everywhere else.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...problems import RetryableProblem
from .. import EngineUnavailable
from .families import BY_CLASS, Family, supported
from .hub import DownloadWatcher, fetch_hint, hub_state, offline, route_hub_logging

log = logging.getLogger(__name__)

# owner/name (or a bare name): what the hub accepts as a repository id.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")
_VARIANT_FILES = ("*.{variant}.safetensors", "*.{variant}.bin", "*.{variant}-*.safetensors")


class ModelUnavailable(RetryableProblem):
    """The model cannot be had right now (folder missing, not in the hub cache while
    offline, network down). Retryable: the folder may be mounted or the model fetched
    meanwhile. ``hint`` says how to fix it."""


@dataclass(frozen=True)
class ModelSource:
    model: str  # as the rule names it
    folder: Path | None  # a local folder, resolved
    hub_id: str | None
    class_name: str
    # A hub model in the cache while the hub is out of reach (or HF_HUB_OFFLINE is set):
    # loaded from the cache alone, with no network call to time out.
    local_only: bool = False

    @property
    def key(self) -> str:
        """The same model however a rule spells it (relative or absolute folder)."""
        return str(self.folder) if self.folder is not None else f"hub:{self.hub_id}"

    @property
    def where(self) -> str:
        return str(self.folder) if self.folder is not None else str(self.hub_id)


def locate(model: str) -> ModelSource:
    """Where ``model`` is and which pipeline class it holds, without loading weights."""
    path = Path(model).expanduser()
    # The worker makes local folders absolute (relative to the config file), so a
    # relative `owner/name` here is a hub id, never a folder under the daemon's cwd.
    hub_shaped = bool(_HUB_ID.match(model)) and not path.is_absolute()
    if path.is_dir() and not hub_shaped:
        return ModelSource(model, path.resolve(), None, _class_name(path.resolve(), model))
    if hub_shaped:
        return _hub_source(model)
    if path.exists():
        raise ModelUnavailable(
            f"the AI model this rule names, {model!r}, is a file, not a model folder",
            "ask whoever looks after i2vd to point the rule's 'model' at the folder holding "
            "the pipeline (model_index.json and its sub-folders) or at a hub id such as "
            "ali-vilab/i2vgen-xl",
            detail=f"{path.resolve()} is not a folder",
        )
    raise ModelUnavailable(
        f"the AI model this rule uses is not on this computer: {path.resolve()} does not exist",
        "ask whoever looks after i2vd to mount or copy the model folder there (e.g. `hf "
        f"download ali-vilab/i2vgen-xl --local-dir {path}`), or to fix the rule's 'model'; "
        "i2vd tries again by itself",
        detail=f"rule's model: {model!r}",
    )


def _class_name(folder: Path, model: str) -> str:
    index = folder / "model_index.json"
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelUnavailable(
            f"the AI model folder {folder} is incomplete, or still being copied",
            "ask whoever looks after i2vd to copy the whole pipeline folder (model_index.json "
            f"and its sub-folders), e.g. `hf download ali-vilab/i2vgen-xl --local-dir {folder}`",
            detail=f"{folder} has no model_index.json, so it is not a diffusers pipeline",
        ) from None
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(
            f"the AI model's description file {index} could not be read",
            "ask whoever looks after i2vd to check the file (a copy may be in progress, or "
            "it is damaged)",
            detail=f"{type(exc).__name__}: {exc}",
        ) from None
    name = data.get("_class_name") if isinstance(data, dict) else None
    if not isinstance(name, str):
        raise ModelUnavailable(
            f"the folder of the AI model ({index.parent}) does not hold a usable model",
            "ask whoever looks after i2vd to download the model again",
            detail=f"{index} names no pipeline class ('_class_name')",
        )
    return name


def _hub_source(model: str) -> ModelSource:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    route_hub_logging()
    state = hub_state(model)  # raises ModelUnavailable when neither cache nor hub has it
    if state.cached_index is not None:
        name = _class_name(state.cached_index.parent, model)
        return ModelSource(model, None, model, name, local_only=not state.reachable)
    try:
        index = hf_hub_download(model, "model_index.json")
    except GatedRepoError:
        raise ModelUnavailable(
            f"the AI model {model!r} needs its licence accepted before this computer may "
            "download it",
            f"ask whoever looks after i2vd to accept its licence on its hub page, log in "
            f"with `hf auth login`, then `hf download {model}`",
            detail="gated repository on the Hugging Face hub",
        ) from None
    except RepositoryNotFoundError:
        raise ModelUnavailable(
            f"the AI model {model!r} that this rule names does not exist online",
            "ask whoever looks after i2vd to check the spelling of the rule's 'model' "
            "(owner/name), or to log in with `hf auth login` if it is private",
            detail="repository not found on the Hugging Face hub",
        ) from None
    except Exception as exc:  # the hub answered the probe but not this request
        raise ModelUnavailable(
            f"the AI model {model!r} is not on this computer yet, and it could not be "
            "downloaded now",
            fetch_hint(model, offline=False),
            detail=f"not in the Hugging Face cache and its download failed "
            f"({type(exc).__name__}: {_first_line(exc)})",
        ) from None
    return ModelSource(model, None, model, _class_name(Path(index).parent, model))


def family_of(source: ModelSource) -> Family:
    family = BY_CLASS.get(source.class_name)
    if family is None:
        raise EngineUnavailable(
            f"the AI model {source.model!r} is of a kind i2vd cannot make videos with",
            f"ask whoever looks after i2vd to use a model of a supported family: {supported()}",
            detail=f"{source.class_name} is not supported by the diffusion engine",
        )
    missing = [name for name in family.requires if importlib.util.find_spec(name) is None]
    if missing:
        raise EngineUnavailable(
            f"this computer lacks software that {family.label} models need",
            f"ask whoever looks after i2vd to install it (pip install {' '.join(missing)}) "
            "and restart i2vd, then move the image back into the inbox",
            detail=f"missing Python package(s): {', '.join(missing)}",
        )
    return family


# --- device, dtype, variant ---------------------------------------------------


def resolve_device(option: str) -> str:
    import torch

    if option != "auto":
        return option
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def is_accelerator(device: str) -> bool:
    return not device.startswith("cpu")


def resolve_dtype(setting: str, family: Family, device: str) -> str:
    if setting != "auto":
        return setting
    return family.accelerator_dtype if is_accelerator(device) else "float32"


def has_variant_files(folder: Path, variant: str) -> bool:
    """Whether any component folder holds weights of ``variant`` (e.g. unet/*.fp16.safetensors)."""
    return any(
        next(folder.glob(f"*/{pattern.format(variant=variant)}"), None) is not None
        for pattern in _VARIANT_FILES
    )


def variant_candidates(setting: str | None, source: ModelSource, device: str) -> list[str | None]:
    """Weights variants to try in order; the last one is used if the others are missing."""
    if setting != "auto":
        return [setting]
    if not device.startswith("cuda"):
        return [None]
    if source.folder is not None:
        return ["fp16"] if has_variant_files(source.folder, "fp16") else [None]
    return ["fp16", None]


def _no_such_variant(exc: BaseException) -> bool:
    text = str(exc)
    return "variant" in text and ("no such modeling files" in text or "not have" in text)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _dtype_argument(dtype_name: str, family: Family) -> Any:
    import torch

    dtype = getattr(torch, dtype_name)
    if dtype == torch.float32 or not family.float32_components:
        return dtype
    return {"default": dtype, **dict.fromkeys(family.float32_components, torch.float32)}


def _dtype_keyword() -> str:
    # diffusers renamed torch_dtype to dtype (the old name warns); older releases only
    # know torch_dtype and would silently ignore dtype.
    from diffusers.utils import deprecation_utils

    return "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"


def load_pipeline(
    source: ModelSource, family: Family, dtype_name: str, variants: list[str | None], device: str
) -> tuple[Any, str | None]:
    """The pipeline on ``device`` and the variant that was loaded."""
    import diffusers

    # diffusers is untyped; the pipeline is handled as Any throughout.
    pipeline_class: Any = diffusers.DiffusionPipeline
    where = source.folder if source.folder is not None else source.hub_id
    dtype_kw: dict[str, Any] = {_dtype_keyword(): _dtype_argument(dtype_name, family)}
    _quiet_progress_bars()
    if source.local_only:
        dtype_kw["local_files_only"] = True
    for index, variant in enumerate(variants):
        last = index == len(variants) - 1
        try:
            with DownloadWatcher(source.hub_id if not source.local_only else None):
                pipe = pipeline_class.from_pretrained(where, variant=variant, **dtype_kw)
        except Exception as exc:
            if not last:
                # "No such variant" reads differently online, offline and across diffusers
                # releases; whatever it was, the next candidate's error is the one to report.
                log.info(
                    "%s: no %r weights (%s); trying %r",
                    source.model,
                    variant,
                    _first_line(exc),
                    variants[index + 1],
                )
                continue
            if variant is not None and _no_such_variant(exc):
                raise EngineUnavailable(
                    f"the AI model {source.model!r} has no {variant!r} weights variant, "
                    "which the rule asks for",
                    "ask whoever looks after i2vd to set the rule's diffusion.variant to auto "
                    "or null (the full-precision weights are then used)",
                ) from None
            if isinstance(exc, ImportError):
                raise EngineUnavailable(
                    f"this computer lacks software that the AI model {source.model!r} needs",
                    "ask whoever looks after i2vd to install the package the detail names "
                    "(with pip) and restart i2vd, then move the image back into the inbox",
                    detail=_first_line(exc),
                ) from None
            raise _load_failure(source, exc) from None
        pipe.set_progress_bar_config(disable=True)
        pipe.to(device)
        return pipe, variant
    raise AssertionError("no variant candidates")  # pragma: no cover - callers give one


def _quiet_progress_bars() -> None:
    # Loading bars on a daemon's stderr are noise between log lines; this is process-wide,
    # which suits a daemon. The engine reports its own progress.
    import diffusers
    import transformers

    for library in (diffusers, transformers):
        library_logging: Any = library.utils.logging
        library_logging.disable_progress_bar()


def _load_failure(source: ModelSource, exc: BaseException) -> Exception:
    reason = f"{type(exc).__name__}: {_first_line(exc)}"
    if source.folder is not None:
        return ModelUnavailable(
            f"the AI model in {source.folder} could not be loaded: it looks incomplete or damaged",
            "ask whoever looks after i2vd to copy or download it again (e.g. `hf download "
            f"<hub id> --local-dir {source.folder}`); i2vd tries again by itself",
            detail=reason,
        )
    if source.local_only:
        return ModelUnavailable(
            f"the AI model {source.hub_id!r} is only partly on this computer, and the rest "
            "cannot be downloaded now",
            fetch_hint(str(source.hub_id), offline=offline()),
            detail=f"partly in the Hugging Face cache, the hub unreachable: {reason}",
        )
    return ModelUnavailable(
        f"the AI model {source.hub_id!r} could not be loaded",
        fetch_hint(str(source.hub_id), offline=offline()),
        detail=f"from the Hugging Face hub or its cache: {reason}",
    )
