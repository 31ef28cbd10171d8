"""``cuda-cpp``: placeholder until its issue lands."""

from __future__ import annotations

from specsample.contract import Backend, Capabilities, VerifyInputs, VerifyOutput


class CudaCppBackend(Backend):
    name = "cuda-cpp"
    description = "One fused CUDA C++ kernel per call (torch extension)."
    capabilities = Capabilities(devices=("cuda",), needs_gpu=True, fused=True, launches_per_call=1)

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        return False, "not yet implemented"

    def _verify(self, inputs: VerifyInputs) -> VerifyOutput:
        raise NotImplementedError(self.name)
