"""The GPU circuit breaker: which errors are the device's fault, the breaker's states,
and a worker whose (fake) GPU breaks.

The exceptions are torch's own types with the messages CUDA really produces (raised
here by hand, or by the fake engines in fake_gpu.py: there is no GPU to break)."""

from __future__ import annotations

import pytest
import torch

from conftest import Layout, make_image
from daemon.admin_queue import AdminQueue
from daemon.breaker import DeviceBreaker, device_fault
from daemon.intake import Intake
from daemon.rules import load_rules
from daemon.store import Capabilities, JobStore
from daemon.worker import Worker
from fake_gpu import FakeFaultyGPU, FakeHealthyGPU

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


def _queue_images(layout: Layout, store: JobStore, count: int) -> None:
    settings = layout.load()
    rules, problems = load_rules(settings.rules_dir)
    assert problems == []
    intake = Intake(store, lambda: rules, settings.failed_dir, 3)
    for n in range(count):
        assert intake.take(layout.inbox, make_image(layout.inbox / f"p{n}.jpg", seed=n)).job


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
