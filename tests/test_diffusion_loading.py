"""Finding and loading models: folders, hub ids (offline), families, variants, dtypes,
and the errors a user sees when something is missing."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from test_diffusion_engine import make_engine, make_request, tiny_model

from conftest import REPO
from daemon.engines import EngineOptions, EngineUnavailable, get_engine
from daemon.engines.diffusion import ModelUnavailable, loading
from daemon.engines.diffusion.families import BY_CLASS, lowest_frames, round_frames
from daemon.engines.diffusion.loading import (
    has_variant_files,
    load_pipeline,
    locate,
    resolve_device,
    resolve_dtype,
    variant_candidates,
)

WAN = BY_CLASS["WanImageToVideoPipeline"]
I2VGEN = BY_CLASS["I2VGenXLPipeline"]


def test_missing_folder_is_retryable_and_says_how_to_fetch(tmp_path: Path) -> None:
    engine = make_engine(tmp_path)
    folder = tmp_path / "models" / "i2vgen-xl"
    with pytest.raises(ModelUnavailable) as caught:
        engine.render(make_request(folder, 256))
    assert str(folder) in str(caught.value)
    assert "does not exist" in str(caught.value)
    assert f"hf download ali-vilab/i2vgen-xl --local-dir {folder}" in caught.value.hint


def test_folder_without_model_index_is_not_a_pipeline(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelUnavailable, match="incomplete") as caught:
        locate(str(tmp_path / "empty"))
    assert "no model_index.json" in (caught.value.detail or "")
    assert "copy the whole pipeline folder" in caught.value.hint


def test_unsupported_family_fails_before_loading_weights(tmp_path: Path) -> None:
    folder = tmp_path / "sd"
    folder.mkdir()
    # Only the index: no weights at all, so the error must come before any loading.
    index = {
        "_class_name": "StableDiffusionPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"],
    }
    (folder / "model_index.json").write_text(json.dumps(index))
    engine = make_engine(tmp_path)
    with pytest.raises(EngineUnavailable) as caught:
        engine.render(make_request(folder, 256))
    assert str(folder) in str(caught.value)
    assert "StableDiffusionPipeline" in (caught.value.detail or "")
    for name in ("I2VGenXLPipeline", "StableVideoDiffusionPipeline", "WanImageToVideoPipeline"):
        assert name in caught.value.hint
    assert engine.pipeline is None


def test_missing_packages_are_named_with_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "diffusers" else real(name)
    )
    with pytest.raises(EngineUnavailable) as caught:
        get_engine("diffusion", {}, EngineOptions())
    assert "needs diffusers" in (caught.value.detail or "")
    assert "pip install 'i2vd[diffusion]'" in caught.value.hint


def test_wan_without_ftfy_is_a_clear_error(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tiny_model(tmp_path_factory, "wan_i2v")
    real = loading.importlib.util.find_spec
    monkeypatch.setattr(
        loading.importlib.util, "find_spec", lambda name, *a: None if name == "ftfy" else real(name)
    )
    with pytest.raises(EngineUnavailable) as caught:
        make_engine(tmp_path).render(make_request(model, 64))
    assert "ftfy" in (caught.value.detail or "")
    assert "pip install ftfy" in caught.value.hint


def test_rule_without_model_is_refused(tmp_path: Path) -> None:
    request = make_request("x", 256)
    object.__setattr__(request, "model", None)
    with pytest.raises(EngineUnavailable, match="needs a model"):
        make_engine(tmp_path).render(request)


# --- hub ids ---------------------------------------------------------------------------


def _cache_as_hub_repo(folder: Path, cache: Path, repo_id: str) -> None:
    """Lay ``folder`` out as the Hugging Face cache holds a downloaded repository."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


def test_hub_ids_offline_cached_loads_and_missing_says_how_to_fetch(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    # A subprocess: HF_HUB_OFFLINE and the cache location are read when
    # huggingface_hub is imported, as they are in the daemon.
    cache = tmp_path / "hub"
    _cache_as_hub_repo(tiny_model(tmp_path_factory, "wan_i2v"), cache, "i2vd-tests/tiny-wan")
    code = f"""
import json, sys
sys.path.insert(0, {str(REPO / "tests")!r})
from test_diffusion_engine import make_engine, make_request
from pathlib import Path
from daemon.engines.diffusion import ModelUnavailable
engine = make_engine(Path({str(tmp_path)!r}))
clip = engine.render(make_request("i2vd-tests/tiny-wan", 64, steps=2))
result = {{"frames": len(clip.frames), "family": clip.family, "model": clip.model}}
try:
    engine.render(make_request("i2vd-tests/not-downloaded", 64, steps=2))
except ModelUnavailable as exc:
    result["error"], result["hint"], result["detail"] = str(exc), exc.hint, exc.detail
print(json.dumps(result))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests")])
    run = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["frames"] == 9
    assert result["family"] == "WanImageToVideoPipeline"
    assert result["model"] == "i2vd-tests/tiny-wan"
    assert "'i2vd-tests/not-downloaded'" in result["error"]
    assert "HF_HUB_OFFLINE is set" in result["detail"]
    assert "hf download i2vd-tests/not-downloaded" in result["hint"]
    assert "huggingface-cli download i2vd-tests/not-downloaded" in result["hint"]
    assert "unset HF_HUB_OFFLINE" in result["hint"]


# --- device, dtype, variants --------------------------------------------------------------


def test_device_auto_prefers_cuda_then_mps_then_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"
    assert resolve_device("cuda:1") == "cuda:1"
    assert resolve_device("cpu") == "cpu"


def test_dtype_auto_follows_device_and_family() -> None:
    assert resolve_dtype("auto", I2VGEN, "cuda") == "float16"
    assert resolve_dtype("auto", WAN, "cuda:0") == "bfloat16"
    assert resolve_dtype("auto", WAN, "cpu") == "float32"
    assert resolve_dtype("bfloat16", I2VGEN, "cpu") == "bfloat16"


def test_variant_candidates(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    plain = locate(str(tiny_model(tmp_path_factory, "i2vgenxl")))
    assert not has_variant_files(plain.folder, "fp16")  # type: ignore[arg-type]
    fp16_folder = tmp_path / "fp16"
    shutil.copytree(plain.folder, fp16_folder)  # type: ignore[arg-type]
    (fp16_folder / "unet" / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"")
    fp16 = locate(str(fp16_folder))
    hub = loading.ModelSource(
        "ali-vilab/i2vgen-xl", None, "ali-vilab/i2vgen-xl", "I2VGenXLPipeline"
    )

    assert variant_candidates("auto", fp16, "cuda") == ["fp16"]
    assert variant_candidates("auto", plain, "cuda") == [None]
    assert variant_candidates("auto", fp16, "cpu") == [None]
    assert variant_candidates("auto", fp16, "mps") == [None]
    assert variant_candidates("auto", hub, "cuda") == ["fp16", None]
    assert variant_candidates("auto", hub, "cpu") == [None]
    assert variant_candidates("bf16", plain, "cpu") == ["bf16"]
    assert variant_candidates(None, fp16, "cuda") == [None]


def test_fp16_variant_loads_and_falls_back_when_missing(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    from diffusers import DiffusionPipeline

    plain = locate(str(tiny_model(tmp_path_factory, "i2vgenxl")))
    pipe, used = load_pipeline(plain, I2VGEN, "float32", ["fp16", None], "cpu")
    assert used is None  # no fp16 files: the full-precision weights

    with pytest.raises(EngineUnavailable, match="has no 'fp16' weights variant") as caught:
        load_pipeline(plain, I2VGEN, "float32", ["fp16"], "cpu")
    assert "variant" in caught.value.hint

    folder = tmp_path / "with-fp16"
    pipe.save_pretrained(folder, variant="fp16")
    shutil.copy(plain.folder / "model_index.json", folder / "model_index.json")  # type: ignore[operator]
    source = locate(str(folder))
    assert variant_candidates("auto", source, "cuda") == ["fp16"]
    loaded, used = load_pipeline(source, I2VGEN, "float32", ["fp16"], "cpu")
    assert used == "fp16"
    assert isinstance(loaded, DiffusionPipeline)


def test_family_frame_forms() -> None:
    assert [round_frames(n, 4) for n in (8, 13, 16, 32)] == [9, 13, 17, 33]
    assert [round_frames(n, 8) for n in (8, 16, 24, 32)] == [9, 17, 25, 33]
    assert round_frames(16, 1) == 16
    assert lowest_frames(8, 4) == 9 and lowest_frames(9, 4) == 9 and lowest_frames(8, 1) == 8


# --- availability decided up front -----------------------------------------------------


def _run_hub_case(code: str, env_extra: dict[str, str]) -> tuple[dict[str, Any], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_") and "PROXY" not in k}
    env.update(env_extra)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests")])
    run = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
    return result, run.stderr


UNREACHABLE_CASE = """
import json, logging, time
from pathlib import Path
logging.basicConfig(level=logging.INFO, format="LOG %(name)s: %(message)s")
from test_diffusion_engine import make_engine, make_request
from daemon.engines.diffusion import ModelUnavailable
engine = make_engine(Path({tmp!r}))
result = {{}}
clip = engine.render(make_request("i2vd-tests/tiny-wan", 64, steps=2))
result["cached_frames"] = len(clip.frames)
started = time.monotonic()
try:
    engine.render(make_request("i2vd-tests/not-downloaded", 64, steps=2))
except ModelUnavailable as exc:
    result["error"], result["hint"], result["detail"] = str(exc), exc.hint, exc.detail
result["missing_seconds"] = time.monotonic() - started
result["hub_handlers"] = len(logging.getLogger("huggingface_hub").handlers)
print(json.dumps(result))
"""


def test_no_network_and_no_weights_fails_in_seconds_with_a_plain_message(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """No HF_HUB_OFFLINE, and the hub's address refuses connections (a closed local port
    stands in for a host without network): the cached model loads from the cache alone,
    the missing one fails at once, and nothing speaks of config files or HF_HUB_OFFLINE."""
    cache = tmp_path / "hub"
    _cache_as_hub_repo(tiny_model(tmp_path_factory, "wan_i2v"), cache, "i2vd-tests/tiny-wan")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    env = {"HF_HUB_CACHE": str(cache), "HF_ENDPOINT": f"http://127.0.0.1:{port}"}
    result, stderr = _run_hub_case(UNREACHABLE_CASE.format(tmp=str(tmp_path)), env)
    assert result["cached_frames"] == 9
    assert result["missing_seconds"] < 5, result
    error, hint, detail = result["error"], result["hint"], result["detail"]
    assert "'i2vd-tests/not-downloaded' is not on this computer" in error
    assert "cannot be reached from this host" in detail and f"127.0.0.1:{port}" in detail
    assert "config file" not in error and "HF_HUB_OFFLINE" not in error + hint
    assert "hf download i2vd-tests/not-downloaded" in hint
    assert "--local-dir" in hint
    assert result["hub_handlers"] == 0  # its messages reach the log through ours only
    assert "Retrying" not in stderr


def test_download_progress_is_logged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The watcher reads the cache folder as the hub client fills it (written here)."""
    import logging

    from huggingface_hub import constants

    from daemon.engines.diffusion.hub import DownloadWatcher

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    blobs = tmp_path / "models--owner--big" / "blobs"
    blobs.mkdir(parents=True)
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    hub_log = logging.getLogger("daemon.engines.diffusion.hub")
    handler = Collect()
    hub_log.addHandler(handler)
    monkeypatch.setattr(hub_log, "level", logging.INFO)
    try:
        with DownloadWatcher("owner/big", every=0.05) as watcher:
            for part in range(3):
                (blobs / f"part{part}.incomplete").write_bytes(b"x" * 1_000_000)
                time.sleep(0.3)
            deadline = time.monotonic() + 10  # a loaded machine may delay the watcher
            while (not watcher.reports or watcher.reports[-1] < 3_000_000) and (
                time.monotonic() < deadline
            ):
                time.sleep(0.05)
    finally:
        hub_log.removeHandler(handler)
    assert watcher.reports and watcher.reports[-1] == 3_000_000
    assert any(r.startswith("downloading owner/big: 0.00 GB so far") for r in records)
    with DownloadWatcher(None) as quiet:
        pass
    assert quiet.reports == []
