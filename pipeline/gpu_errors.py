"""What a failed model call means for the process that ran it: memory pressure, a broken device,
or an error of the rows themselves.

PyTorch raises `torch.OutOfMemoryError` when its caching allocator cannot get memory; a failing CUDA
runtime call raises `torch.AcceleratorError` (torch >= 2.8) with the runtime's error code in
`error_code` and `CUDA error: <cudaGetErrorString text>` as its message; cuBLAS and cuDNN failures
arrive as plain `RuntimeError`s whose message names the library's status (`CUDA error:
CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate(handle)`); the CUDA driver API's errors arrive as
`RuntimeError`s worded `CUDA driver error: <text>` (PyTorch) or `Triton Error [CUDA]: <text>` (a Triton
kernel's launch). The classes (docs/architecture.md,
"Failures"):

| class | what is seen | what the model stage does |
| --- | --- | --- |
| `MEMORY` | `torch.OutOfMemoryError`; cudaErrorMemoryAllocation (code 2, "out of memory"); `CUBLAS_STATUS_ALLOC_FAILED`, `CUDNN_STATUS_ALLOC_FAILED`, `CUDNN_STATUS_NOT_ENOUGH_WORKSPACE`; the CPU allocator's "can't allocate memory" | free the cache, split the batch, lower the actor's budget; the actor lives |
| `STICKY` | the CUDA runtime errors that poison the process's context: illegal address (700), launch timeout (702), device-side assert (710), hardware stack error (714), illegal instruction (715), misaligned address (716), invalid address space (717), invalid PC (718), launch failure (719), ECC uncorrectable (214), NVLink uncorrectable (220), no device / devices unavailable / initialisation failure (100, 46, 3), unknown (999); `CUBLAS_STATUS_EXECUTION_FAILED`, `CUDNN_STATUS_EXECUTION_FAILED`; any other CUDA runtime error not listed under MEMORY | end the actor's process (exit 70): a fresh process gets a fresh context |
| `ROW` | anything else (a clip the model cannot take) | an error row for that row alone |

An unknown CUDA error counts as sticky: ending a healthy actor costs one restart, while keeping a
broken one would turn every later row into an error row.
"""

from __future__ import annotations

import enum
import os
import re

import torch


class Kind(enum.Enum):
    MEMORY = "memory"
    STICKY = "sticky"
    ROW = "row"


# cudaError_t values (CUDA runtime API, driver_types.h) and their cudaGetErrorString texts
MEMORY_CODES = {2: "out of memory"}  # cudaErrorMemoryAllocation
STICKY_CODES = {
    3: "initialization error",  # cudaErrorInitializationError
    46: "all CUDA-capable devices are busy or unavailable",  # cudaErrorDevicesUnavailable
    100: "no CUDA-capable device is detected",  # cudaErrorNoDevice
    214: "uncorrectable ECC error encountered",  # cudaErrorECCUncorrectable
    220: "uncorrectable NVLink error was detected during the execution",  # cudaErrorNvlinkUncorrectable
    700: "an illegal memory access was encountered",  # cudaErrorIllegalAddress
    702: "the launch timed out and was terminated",  # cudaErrorLaunchTimeout
    710: "device-side assert triggered",  # cudaErrorAssert
    714: "an uncorrectable error was encountered on the device",  # cudaErrorHardwareStackError
    715: "an illegal instruction was encountered",  # cudaErrorIllegalInstruction
    716: "misaligned address",  # cudaErrorMisalignedAddress
    717: "operation not supported on global/shared address space",  # cudaErrorInvalidAddressSpace
    718: "invalid program counter",  # cudaErrorInvalidPc
    719: "unspecified launch failure",  # cudaErrorLaunchFailure
    999: "unknown error",  # cudaErrorUnknown
}
# library statuses and error names that can appear in a message
MEMORY_NAMES = (
    "cudaErrorMemoryAllocation",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_NOT_ENOUGH_WORKSPACE",
    "CUDA_ERROR_OUT_OF_MEMORY",  # the driver API's name (NVRTC/JIT paths)
    "CUDA out of memory",  # torch.OutOfMemoryError's message, where only the text came back (isolate.py)
    "DefaultCPUAllocator: can't allocate memory",
)
STICKY_NAMES = (
    "CUBLAS_STATUS_EXECUTION_FAILED",
    "CUDNN_STATUS_EXECUTION_FAILED",
    "cudaErrorIllegalAddress",
    "cudaErrorLaunchFailure",
    "cudaErrorAssert",
    "cudaErrorECCUncorrectable",
)
# a CUDA error's text after its prefix: PyTorch's runtime calls ("CUDA error: "), its driver API calls
# ("CUDA driver error: ") and Triton's kernel launcher ("Triton Error [CUDA]: ", the CUDA norm kernels,
# where an earlier kernel's asynchronous fault often surfaces); the texts are cuGetErrorString's
_CUDA_ERROR = re.compile(r"(?:CUDA error|CUDA driver error|Triton Error \[CUDA\]): (.+)")


def classify(e: BaseException) -> Kind:
    """The class of an exception a model call raised (see the module's table)."""
    if isinstance(e, torch.OutOfMemoryError):
        return Kind.MEMORY
    message = str(e)
    if any(name in message for name in MEMORY_NAMES):
        return Kind.MEMORY
    if any(name in message for name in STICKY_NAMES):
        return Kind.STICKY
    code = getattr(e, "error_code", None)  # torch.AcceleratorError: the CUDA runtime's code
    if isinstance(code, int) and code in MEMORY_CODES:
        return Kind.MEMORY
    accelerator_error = getattr(torch, "AcceleratorError", ())
    if isinstance(e, accelerator_error):
        return Kind.STICKY  # a listed sticky code, or one we do not know: the context is not trusted
    said = _CUDA_ERROR.search(message)
    if said is not None:
        text = said.group(1).strip()
        return Kind.MEMORY if text.startswith(MEMORY_CODES[2]) else Kind.STICKY
    return Kind.ROW


INJECT_ENV = "E2V_INJECT_DEVICE_ERROR"


def maybe_inject(node: str) -> None:
    """Test seam: on the Ray node whose id contains `E2V_INJECT_DEVICE_ERROR`, raise what a broken
    GPU raises, as a model call's first CUDA call would. Unset in production."""
    needle = os.environ.get(INJECT_ENV)
    if needle and needle in node:
        raise RuntimeError(f"CUDA error: {STICKY_CODES[700]} (injected: {INJECT_ENV})")
