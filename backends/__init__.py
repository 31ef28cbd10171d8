"""The built-in backends, registered through the same hook third-party plugins use.

Each backend lives in its own module; importing this package imports only the PyTorch modules'
classes, never triton, cupy or the CUDA extension (those load inside ``is_available``/first use).
"""

from __future__ import annotations

from collections.abc import Callable

from specsample.hookspecs import hookimpl


@hookimpl
def register_backends(register: Callable[[type], None]) -> None:
    from .cuda_cpp import CudaCppBackend
    from .cupy_backend import CupyBackend
    from .torch_compile import TorchCompileBackend
    from .torch_loop import TorchLoopBackend
    from .torch_vectorized import TorchVectorizedBackend
    from .triton_backend import TritonBackend

    for backend in (
        TorchLoopBackend,
        TorchVectorizedBackend,
        TorchCompileBackend,
        CudaCppBackend,
        TritonBackend,
        CupyBackend,
    ):
        register(backend)
