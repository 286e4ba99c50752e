"""The GPU circuit breaker: which errors are the device's fault, and the breaker's states.

The exceptions are torch's own types with the messages CUDA really produces (raised
here by hand: there is no GPU to break)."""

from __future__ import annotations

import pytest
import torch

from daemon.breaker import DeviceBreaker, device_fault

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
