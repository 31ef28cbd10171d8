"""Compile the triton backend's kernel for a GPU target without a GPU (catches type errors that the
interpreter tolerates) and print its resource use. Usage: python scripts/triton_compile_check.py"""

from __future__ import annotations

import itertools
import sys

import triton
from specsample.backends import _triton_kernels as kern
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

assert not kern.INTERPRET, "unset TRITON_INTERPRET"


def signature(prob="fp32", ids="i64"):
    return {
        "ids_ptr": f"*{ids}",
        "p_ptr": f"*{prob}",
        "q_ptr": f"*{prob}",
        "u_ptr": "*fp32",
        "seed_ptr": "*i64",
        "tok_ptr": "*i64",
        "num_ptr": "*i64",
        "wsf_ptr": "*fp64",
        "wsi_ptr": "*i32",
        "cnt_ptr": "*i32",
        "seed_lo": "i32",
        "seed_hi": "i32",
        "off_lo": "i32",
        "off_hi": "i32",
        "V": "i32",
        "K": "i32",
        "C": "i32",
        "TPC": "i32",
        "FSLOT": "i32",
        "ISLOT": "i32",
        "K_P2": "constexpr",
        "NT_P2": "constexpr",
        "C_P2": "constexpr",
        "BLOCK": "constexpr",
        "GREEDY": "constexpr",
        "HAS_P": "constexpr",
        "HAS_U": "constexpr",
        "SEED_FROM_PTR": "constexpr",
        "PREFETCH": "constexpr",
        "ALL_ROWS": "constexpr",
    }


def resource_report(ck) -> str:
    """Registers, local memory and load widths of the compiled kernel (cuobjdump as triton ships
    it, and the PTX)."""
    import os
    import re
    import subprocess
    import tempfile

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(ck.asm["cubin"])
        text = subprocess.run([tool, "-res-usage", path], capture_output=True, text=True).stdout
    res = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", text)
    loads = sorted(set(re.findall(r"ld\.global[.\w]*", ck.asm["ptx"])))
    regs = f"regs={res[1]} stack={res[2]} local={res[4]}" if res else "regs=?"
    return f"{regs} loads={','.join(loads)}"


def main() -> int:
    target = GPUTarget("cuda", 90, 32)
    fails = 0
    for greedy, has_p, has_u, seedp, prob, pre in itertools.product(
        (False, True), (False, True), (False, True), (False, True), ("fp32", "bf16"), (0, 1)
    ):
        if greedy and (has_p or has_u or seedp):
            continue  # greedy: ``pre`` stands for ALL_ROWS
        if pre and (has_u or seedp):
            continue
        const = {
            "K_P2": 16,
            "NT_P2": 64,
            "C_P2": 64,
            "BLOCK": 2048,
            "GREEDY": greedy,
            "HAS_P": has_p,
            "HAS_U": has_u,
            "SEED_FROM_PTR": seedp,
            "PREFETCH": bool(pre) and not greedy,
            "ALL_ROWS": bool(pre) and greedy,
        }
        if greedy and pre:
            const["BLOCK"] = 1024
        sig = signature(prob)
        # What triton's launcher infers for 16-aligned pointers and V divisible by 16 (V=128256).
        attrs = {
            (i,): [["tt.divisibility", 16]]
            for i, n in enumerate(sig)
            if n.endswith("_ptr") or n == "V"
        }
        src = ASTSource(fn=kern.verify_kernel, signature=sig, constexprs=const, attrs=attrs)
        try:
            ck = triton.compile(src, target=target, options={"num_warps": 8})
            print(
                f"ok  greedy={greedy:d} p={has_p:d} u={has_u:d} seedptr={seedp:d} pre={pre} {prob}: "
                f"shared={ck.metadata.shared} B; {resource_report(ck)}"
            )
        except Exception as exc:  # noqa: BLE001
            fails += 1
            print(f"FAIL greedy={greedy} p={has_p} u={has_u} seedptr={seedp} {prob}: {exc}"[:3000])
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
