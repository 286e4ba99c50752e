"""The GPU circuit breaker: which errors are the device's fault, the breaker's states,
and a worker whose (fake) GPU breaks.

The exceptions are torch's own types with the messages CUDA really produces (raised
here by hand, or by the fake engines in fake_gpu.py: there is no GPU to break)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import Layout, make_image
from daemon.admin_queue import AdminQueue
from daemon.breaker import DeviceBreaker, device_fault
from daemon.config import Settings
from daemon.intake import Intake
from daemon.rules import load_rules
from daemon.store import Capabilities, JobStore
from daemon.worker import Worker
from fake_gpu import FakeFaultyGPU, FakeHealthyGPU, FakePoisonedGPU

ASYNC_NOTE = (
    "\nCUDA kernel errors might be asynchronously reported at some other API call, so the "
    "stacktrace below might be incorrect.\nFor debugging consider passing "
    "CUDA_LAUNCH_BLOCKING=1\nCompile with `TORCH_USE_CUDA_DSA` to enable device-side assertions."
)

DEVICE_FAULTS = [
    torch.AcceleratorError("CUDA error: an illegal memory access was encountered" + ASYNC_NOTE),
    torch.AcceleratorError("CUDA error: unspecified launch failure" + ASYNC_NOTE),
    torch.AcceleratorError("CUDA error: uncorrectable ECC error encountered" + ASYNC_NOTE),
    torch.AcceleratorError("CUDA error: CUDA-capable device(s) is/are busy or unavailable"),
    torch.AcceleratorError("CUDA error: unknown error" + ASYNC_NOTE),
    torch.AcceleratorError("CUDA error: device-side assert triggered" + ASYNC_NOTE),
    RuntimeError("No CUDA GPUs are available; CUDA error: no CUDA-capable device is detected"),
    RuntimeError("CUDA driver error: CUDA_ERROR_NO_DEVICE"),
    RuntimeError(
        "CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasGemmEx( handle, opa, "
        "opb, m, n, k, &falpha, a, CUDA_R_16F, lda, b, CUDA_R_16F, ldb, &fbeta, c, CUDA_R_16F, "
        "ldc, CUDA_R_32F, CUBLAS_GEMM_DEFAULT_TENSOR_OP)`"
    ),
    RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED"),
    RuntimeError(
        "NVML_SUCCESS == r INTERNAL ASSERT FAILED at "
        '"/pytorch/c10/cuda/CUDACachingAllocator.cpp":838, please report a bug to PyTorch.'
    ),
    RuntimeError("Unable to determine the device handle for GPU0000:01:00.0: GPU is lost."),
]

NOT_DEVICE_FAULTS = [
    torch.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 23.65 "
        "GiB of which 1.03 GiB is free."
    ),
    torch.AcceleratorError("CUDA error: out of memory" + ASYNC_NOTE),
    RuntimeError("MPS backend out of memory (MPS allocated: 17.00 GB)"),
    ValueError("cannot identify image file"),
    RuntimeError("Expected all tensors to be on the same device, but found cuda:0 and cpu"),
    OSError(28, "No space left on device"),
]


@pytest.mark.parametrize("exc", DEVICE_FAULTS, ids=lambda e: str(e)[:40])
def test_device_faults_are_recognised(exc: BaseException) -> None:
    reason = device_fault(exc)
    assert reason is not None and reason == str(exc).strip().splitlines()[0]


@pytest.mark.parametrize("exc", NOT_DEVICE_FAULTS, ids=lambda e: str(e)[:40])
def test_other_errors_are_the_jobs(exc: BaseException) -> None:
    assert device_fault(exc) is None


def test_a_fault_wrapped_by_an_engine_is_still_found() -> None:
    try:
        try:
            raise torch.AcceleratorError("CUDA error: an illegal memory access was encountered")
        except RuntimeError as inner:
            raise RuntimeError("denoising step 12 failed") from inner
    except RuntimeError as outer:
        assert device_fault(outer) == "CUDA error: an illegal memory access was encountered"


def test_breaker_opens_cools_down_and_closes_on_success() -> None:
    breaker = DeviceBreaker(limit=3, cooldown=60)
    assert breaker.allows_gpu(0) and not breaker.faulted
    breaker.fault("CUDA error: unspecified launch failure", now=100)
    assert breaker.faulted and not breaker.exhausted
    assert not breaker.allows_gpu(159.9)
    assert breaker.allows_gpu(160)  # one GPU job may try again
    breaker.fault("CUDA error: unspecified launch failure", now=160)
    assert not breaker.allows_gpu(200)
    breaker.success()
    assert not breaker.faulted and breaker.allows_gpu(200) and breaker.reason == ""


def test_breaker_is_exhausted_after_limit_faults_in_a_row() -> None:
    breaker = DeviceBreaker(limit=2, cooldown=0)
    breaker.fault("GPU is lost", now=1)
    assert not breaker.exhausted
    breaker.fault("GPU is lost", now=2)
    assert breaker.exhausted and breaker.reason == "GPU is lost"


# --- the worker with a fake GPU ---------------------------------------------------------

GPU_RULE = """\
name: gpu
engine: diffusion
model: fake/gpu-model
preset: quick
params: {resolution: 256}
"""


def _queue_images(layout: Layout, store: JobStore, count: int, poison: bool = False) -> int | None:
    """Queue ``count`` pictures p0.jpg…, after a first one, poison.jpg, taller than
    wide (what FakePoisonedGPU faults on) with ``poison``: its job id then."""
    settings = layout.load()
    rules, problems = load_rules(settings.rules_dir)
    assert problems == []
    intake = Intake(store, lambda: rules, settings.failed_dir, 3)
    poisoned = None
    if poison:
        taken = intake.take(layout.inbox, make_image(layout.inbox / "poison.jpg", 240, 320))
        assert taken.job is not None
        poisoned = taken.job.id
    for n in range(count):
        assert intake.take(layout.inbox, make_image(layout.inbox / f"p{n}.jpg", seed=n)).job
    return poisoned


def test_a_broken_gpu_fails_no_image_and_another_daemon_renders_them(layout: Layout) -> None:
    (layout.rules / "motion.yaml").unlink()
    layout.rule("gpu", GPU_RULE)
    settings = layout.load()
    store = JobStore(settings.database_url)
    try:
        _queue_images(layout, store, 10)
        can_run = Capabilities(("motion", "diffusion"))
        store.daemons.register("broken:1", "broken", 1, can_run)
        broken = Worker(settings, store, "broken:1", breaker=DeviceBreaker(3, cooldown=3600))
        faulty = FakeFaultyGPU()
        broken.engines["diffusion"] = faulty  # type: ignore[assignment]
        healthy = Worker(settings, store, "healthy:2")
        healthy.engines["diffusion"] = FakeHealthyGPU()  # type: ignore[assignment]

        first = broken.run_once(0)
        assert first is not None and (first.state, first.attempts) == ("queued", 0)
        assert broken.breaker.faulted and "illegal memory access" in broken.breaker.reason
        with AdminQueue(settings.database_url) as queue:  # what `i2vd status` lists
            [row] = [s.daemon for s in queue.daemons(60)]
        assert (row.state, row.reason) == (
            "faulted",
            "CUDA error: an illegal memory access was encountered",
        )
        assert broken.run_once(0) is None  # it takes no GPU job now
        while healthy.run_once(0) is not None:
            pass
        assert faulty.calls == 1
        assert store.count_by_state() == {"done": 10}
        assert layout.files(layout.failed) == []
        assert len(list(layout.outbox.glob("*.mp4"))) == 10
    finally:
        store.close()


def test_the_breaker_closes_after_a_good_gpu_job_and_trips_after_the_limit(
    layout: Layout,
) -> None:
    (layout.rules / "motion.yaml").unlink()
    layout.rule("gpu", GPU_RULE)
    settings = layout.load()
    store = JobStore(settings.database_url)
    try:
        _queue_images(layout, store, 4)
        worker = Worker(settings, store, "w:1", breaker=DeviceBreaker(2, cooldown=0))
        worker.engines["diffusion"] = FakeFaultyGPU()  # type: ignore[assignment]
        worker.run_once(0)
        assert worker.breaker.in_a_row == 1
        worker.engines["diffusion"] = FakeHealthyGPU()  # type: ignore[assignment]
        worker.run_once(0)
        assert not worker.breaker.faulted  # the GPU works again
        worker.engines["diffusion"] = FakeFaultyGPU()  # type: ignore[assignment]
        worker.run_once(0)
        worker.run_once(0)
        assert worker.breaker.exhausted
        assert store.count_by_state() == {"done": 1, "queued": 3}
        assert all(job.attempts == 0 for job in store.list_jobs(["queued"]))
    finally:
        store.close()


def test_a_gpu_that_works_again_while_the_queue_is_paused_says_paused(layout: Layout) -> None:
    """The fault clears on a job claimed before `i2vd pause`: the registry row goes
    back to the queue's state, not to running."""
    (layout.rules / "motion.yaml").unlink()
    layout.rule("gpu", GPU_RULE)
    settings = layout.load()
    store = JobStore(settings.database_url)
    try:
        _queue_images(layout, store, 2)
        store.daemons.register("w:1", "w", 1, Capabilities(("diffusion",)))
        worker = Worker(settings, store, "w:1", breaker=DeviceBreaker(3, cooldown=0))
        worker.engines["diffusion"] = FakeFaultyGPU()  # type: ignore[assignment]
        worker.run_once(0)
        with AdminQueue(settings.database_url) as queue:
            assert [s.daemon.state for s in queue.daemons(60)] == ["faulted"]
            queue.pause("admin@host")
        worker.engines["diffusion"] = FakeHealthyGPU()  # type: ignore[assignment]
        done = worker.run_once(0)
        assert done is not None and done.state == "done" and not worker.breaker.faulted
        with AdminQueue(settings.database_url) as queue:
            [row] = [s.daemon for s in queue.daemons(60)]
        assert (row.state, row.reason) == ("paused", "")
    finally:
        store.close()


# --- an image that makes working GPUs fault ---------------------------------------------


def _fresh_daemon(settings: Settings, store: JobStore, owner: str, gpu: object) -> Worker:
    """A worker as a (re)started daemon has it: a breaker with no fault yet, and a long
    cool-down, so that after a fault it takes no more GPU jobs (as one that stops)."""
    breaker = DeviceBreaker(settings.gpu_fault_limit, cooldown=3600)
    worker = Worker(settings, store, owner, breaker=breaker)
    worker.engines["diffusion"] = gpu  # type: ignore[assignment]
    return worker


def _run_until_idle(worker: Worker) -> None:
    while worker.run_once(0) is not None:
        pass


def test_an_image_that_faults_working_gpus_fails_with_a_plain_report(layout: Layout) -> None:
    (layout.rules / "motion.yaml").unlink()
    layout.rule("gpu", GPU_RULE)
    settings = layout.load(gpu_fault_limit=3)
    store = JobStore(settings.database_url)
    try:
        poison = _queue_images(layout, store, 3, poison=True)
        assert poison is not None
        gpus = [FakePoisonedGPU() for _ in range(4)]
        for n, gpu in enumerate(gpus[:2]):
            # A daemon just (re)started, its GPU working: the poison, first in the
            # queue, faults it and goes back, counted against the image.
            _run_until_idle(_fresh_daemon(settings, store, f"gpu{n}:1", gpu))
            again = store.get(poison)
            assert again is not None and (again.state, again.device_faults) == ("queued", n + 1)
            assert again.attempts == 0  # the faults used no attempt
        _run_until_idle(_fresh_daemon(settings, store, "gpu2:1", gpus[2]))
        assert store.count_by_state() == {"failed": 1, "queued": 3}
        _run_until_idle(_fresh_daemon(settings, store, "gpu3:1", gpus[3]))
        assert [gpu.faults for gpu in gpus] == [1, 1, 1, 0]

        failed = store.get(poison)
        assert failed is not None and (failed.state, failed.device_faults) == ("failed", 3)
        assert store.count_by_state() == {"done": 3, "failed": 1}
        assert layout.files(layout.failed) == ["poison.jpg", "poison.jpg.error.json"]
        report = json.loads((layout.failed / "poison.jpg.error.json").read_text("utf-8"))
        assert report["error"] == (
            "the graphics card failed each time it tried to make this video, on 3 tries on "
            "a card that was otherwise working"
        )
        assert report["hint"].startswith("the picture may trigger a fault in the graphics driver")
        assert report["hint"].endswith(f"to try again: i2vd retry {poison}")
        assert "CUDA error: an illegal memory access was encountered" in report["detail"]
        assert (report["device_faults"], report["attempts"], report["job"]) == (3, 1, poison)
        assert sorted(p.name for p in layout.outbox.glob("*.mp4")) == [
            f"p{n}.gpu.mp4" for n in range(3)
        ]
    finally:
        store.close()


def test_a_gpu_that_renders_between_two_faults_counts_both(layout: Layout) -> None:
    """One daemon, no restart: the poison and the other images come from two inboxes
    taken in turn, so the GPU shows it works between the poison's tries."""
    (layout.rules / "motion.yaml").unlink()
    layout.rule("gpu", GPU_RULE)
    settings = layout.load(gpu_fault_limit=2)
    store = JobStore(settings.database_url)
    try:
        _queue_images(layout, store, 2)
        rules, _ = load_rules(settings.rules_dir)
        intake = Intake(store, lambda: rules, settings.failed_dir, 3)
        other = layout.inbox / "other"  # an inbox of its own name
        taken = intake.take(other, make_image(other / "poison.jpg", 240, 320))
        assert taken.job is not None
        worker = Worker(settings, store, "w:1", breaker=DeviceBreaker(3, cooldown=0))
        worker.engines["diffusion"] = FakePoisonedGPU()  # type: ignore[assignment]
        seen = []
        while (job := worker.run_once(0)) is not None:
            seen.append((job.relative, job.state, job.device_faults))
            assert not worker.breaker.exhausted
        assert [s for s in seen if s[0] == "poison.jpg"] == [
            ("poison.jpg", "queued", 1),
            ("poison.jpg", "failed", 2),
        ]
        assert (
            seen.index(("poison.jpg", "failed", 2)) - seen.index(("poison.jpg", "queued", 1)) == 2
        )
        assert store.count_by_state() == {"done": 2, "failed": 1}
        assert layout.files(layout.failed) == ["poison.jpg", "poison.jpg.error.json"]
    finally:
        store.close()


def test_a_broken_gpu_counts_one_fault_per_fresh_start_and_fails_no_image(
    layout: Layout,
) -> None:
    (layout.rules / "motion.yaml").unlink()
    layout.rule("gpu", GPU_RULE)
    settings = layout.load(gpu_fault_limit=3)
    store = JobStore(settings.database_url)
    try:
        _queue_images(layout, store, 2)
        worker = Worker(settings, store, "broken:1", breaker=DeviceBreaker(3, cooldown=0))
        faulty = FakeFaultyGPU()
        worker.engines["diffusion"] = faulty  # type: ignore[assignment]
        while not worker.breaker.exhausted:  # what the daemon runs until it exits 7
            job = worker.run_once(0)
            assert job is not None and job.state == "queued"
        assert faulty.calls == 3
        jobs = store.list_jobs(newest_first=False)
        # Only the fault on a GPU not yet faulting counts; the rest were the GPU's.
        assert [(j.state, j.device_faults, j.attempts) for j in jobs] == [
            ("queued", 1, 0),
            ("queued", 0, 0),
        ]
        assert layout.files(layout.failed) == []
    finally:
        store.close()
