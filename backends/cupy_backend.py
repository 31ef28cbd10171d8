"""``cupy``: placeholder until its issue lands."""

from __future__ import annotations

from specsample.contract import Backend, Capabilities, VerifyInputs, VerifyOutput


class CupyBackend(Backend):
    name = "cupy"
    description = "The CUDA C++ kernel compiled by NVRTC through CuPy."
    capabilities = Capabilities(devices=("cuda",), needs_gpu=True, fused=True, launches_per_call=1)

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        return False, "not yet implemented"

    def _verify(self, inputs: VerifyInputs) -> VerifyOutput:
        raise NotImplementedError(self.name)
