"""Every Triton kernel compiles for an H100 (sm_90) without a GPU.

The interpreter tests prove the kernels' arithmetic on the CPU, but the interpreter accepts code the
compiler refuses (a type that does not unify across branches, a non-constexpr loop bound, a helper
called with mismatched arguments). Here ``triton.compile`` takes each kernel from source to a cubin
(ptxas included, as shipped with triton) for a few constexpr variants per kernel, so such a break
fails on any machine, seconds after it is written, not at the next GPU run.
"""

from __future__ import annotations

import pytest

triton = pytest.importorskip("triton")

try:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
except ImportError:  # pragma: no cover - a triton without the offline compile API
    pytest.skip(
        "this triton has no offline compile API (ASTSource, GPUTarget)", allow_module_level=True
    )

HOPPER = GPUTarget("cuda", 90, 32)

#: pointer arguments by name -> triton pointer type (every kernel of the package uses these names)
POINTERS = {
    "ids_ptr": "*i64",
    "par_ptr": "*i64",
    "cnt_ptr": "*i32",
    "p_ptr": "*fp32",
    "q_ptr": "*fp32",
    "d_ptr": "*fp32",
    "u_ptr": "*fp32",
    "seed_ptr": "*i64",
    "tok_ptr": "*i64",
    "acc_ptr": "*i64",
    "num_ptr": "*i64",
    "st_ptr": "*i32",
    "wsf_ptr": "*fp64",
    "wsi_ptr": "*i32",
    "tot_ptr": "*fp64",
    "bad_ptr": "*i32",
    "num_draft_ptr": "*i64",
    "temp_ptr": "*fp32",
    "top_k_ptr": "*i64",
    "top_p_ptr": "*fp32",
    "pflags_ptr": "*i32",
    "seeds_ptr": "*i64",
    "offsets_ptr": "*i64",
    "ctr_ptr": "*i32",
    "top_ptr": "*fp32",
    "arg_ptr": "*i64",
    "rflag_ptr": "*i32",
    "cut_ptr": "*i64",
    "z_ptr": "*fp64",
}


def compile_for_hopper(
    fn,
    constexprs: dict,
    pointer_types: dict | None = None,
    warps: int = 4,
    ints: dict | None = None,
    **options,
):
    """Compile the ``@triton.jit`` kernel ``fn`` for sm_90 with these constexpr values; every other
    non-pointer argument is a runtime int32. Returns the compiled kernel (it holds the cubin).

    Pointers are marked 16-byte aligned, as the JIT marks torch's allocations (that alignment turns
    loads into vectors, and the layouts change with it). ``ints`` gives runtime integer arguments
    their launch values, specialized as the JIT specializes them (outside ``do_not_specialize``):
    1 becomes a constant, a multiple of 16 is marked so."""
    names = list(fn.arg_names)
    types = {**POINTERS, **(pointer_types or {})}
    unknown = [n for n in names if n.endswith("_ptr") and n not in types]
    assert not unknown, f"pointer arguments without a type here: {unknown}"
    signature = {n: types.get(n) or ("constexpr" if n in constexprs else "i32") for n in names}
    missing = [n for n in [*constexprs, *(ints or {})] if n not in names]
    assert not missing, f"{fn.__name__} has no arguments {missing}"
    constants = dict(constexprs)
    aligned = {n for n in names if n.endswith("_ptr")}
    for name, value in (ints or {}).items():
        if name in fn.do_not_specialize:
            continue
        if value == 1:
            constants[name] = 1
            signature[name] = "constexpr"
        elif value % 16 == 0:
            aligned.add(name)
    source = ASTSource(
        fn=fn,
        signature=signature,
        constexprs={(names.index(k),): v for k, v in constants.items()},
        attrs={(names.index(n),): [["tt.divisibility", 16]] for n in aligned},
    )
    return triton.compile(source, target=HOPPER, options={"num_warps": warps, **options})


def _triton_version() -> tuple[int, int]:
    major, minor = triton.__version__.split(".")[:2]
    return int(major), int(minor)


def _cubin(kernel) -> bool:
    return bool(kernel.asm.get("cubin"))


@pytest.mark.parametrize(
    "greedy, has_p, has_u, chunks",
    [
        (False, True, True, 1),
        (False, False, False, 4),
        (True, False, False, 1),
        (True, False, False, 8),
    ],
)
def test_chain_kernel(greedy, has_p, has_u, chunks):
    from specsample.backends import _triton_kernels as k

    const = dict(K_P2=8, NT_P2=32, C_P2=chunks, BLOCK=1024, GREEDY=greedy, HAS_P=has_p,
                 HAS_U=has_u, SEED_FROM_PTR=not has_u, PREFETCH=chunks == 1,
                 ALL_ROWS=False)  # fmt: skip
    assert _cubin(compile_for_hopper(k.verify_kernel, const, warps=8))


def _ptxas_usage(kernel, tmp_path) -> tuple[int, int] | None:
    """``(registers, spill-store bytes)`` of a compiled kernel, from triton's own ptxas run again
    with ``-v`` on its PTX (None when this triton does not say where its ptxas is)."""
    import re
    import subprocess

    try:
        from triton.backends.nvidia.compiler import get_ptxas
    except ImportError:
        return None
    try:
        tool = get_ptxas(90)  # the ptxas triton itself runs for sm_90 (newer triton)
    except TypeError:
        tool = get_ptxas()
    ptxas = getattr(tool, "path", None)
    if not ptxas:
        return None
    src = tmp_path / "kernel.ptx"
    src.write_text(kernel.asm["ptx"])
    cmd = [ptxas, "-v", "--gpu-name", "sm_90a", str(src), "-o", str(tmp_path / "kernel.cubin")]
    log = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores", log)
    assert regs and spills, log
    return int(regs.group(1)), int(spills.group(1))


@pytest.mark.parametrize(
    "has_p, has_u, batch, num_draft, vocab",
    [
        (True, True, 1, 8, 128256),
        (False, False, 64, 8, 128256),
        (True, False, 1, 3, 128256),
        (True, True, 4, 40, 128256),
        (True, False, 1, 1, 128256),
        (False, True, 8, 2, 151936),
        (True, False, 256, 4, 32000),
    ],
)
def test_block_kernel(tmp_path, has_p, has_u, batch, num_draft, vocab):
    """The block kernel as the GPU launches it (block_split_config on an H100's 132 SMs, the JIT's
    specialization of K and V), within its register budget: no more than a few bytes of spill (a
    tile of 16 elements per thread took 255 registers and spilled; picking step 4's tile out of
    registers spilled 30 KB), and up to K = 8 registers for at least two programs per SM (half
    the register file each). K <= 4 with 16-byte aligned rows is where triton 3.6's scan lowering
    rejects a tl.cumsum over the tile group (the kernel adds the group with a masked sum)."""
    from specsample.backends import _triton_block as k

    plan = k.block_split_config(batch, num_draft, vocab, 132, interpret=False)
    const = dict(K_P2=plan.k_p2, KR_P2=plan.kr_p2, TG=plan.tile_group, ROWS=plan.rows,
                 BLOCK=plan.block, C_P2=plan.c_p2, HAS_P=has_p, HAS_U=has_u,
                 SEED_FROM_PTR=not has_u)  # fmt: skip
    ints = dict(B=batch, V=vocab, K=num_draft, C=plan.chunks, TPC=plan.tiles_per_chunk)
    kernel = compile_for_hopper(
        k.block_kernel, const, warps=plan.num_warps, ints=ints, enable_fp_fusion=False
    )
    assert _cubin(kernel)
    usage = _ptxas_usage(kernel, tmp_path)
    # The register budget holds from triton 3.7 on; 3.6's allocator spills 0.1-4 KB at K = 2..4
    # (docs/dev/triton-kernel.md, "Registers"); the compile itself is checked on every version.
    if usage is not None and _triton_version() >= (3, 7):
        regs, spill = usage
        threads = 32 * plan.num_warps
        assert spill <= 8, f"{regs} registers, {spill} bytes of spill stores"
        if num_draft <= 8:
            assert regs * threads <= 32768, f"{regs} registers x {threads} threads per program"


@pytest.mark.parametrize(
    "greedy, has_p, without, has_u",
    [
        (True, False, False, False),
        (False, False, False, True),
        (False, True, False, False),
        (False, True, True, True),
    ],  # fmt: skip
)
def test_tree_kernel(greedy, has_p, without, has_u):
    from specsample.backends import _triton_tree as k

    const = dict(N_P2=64, D_P2=16, NT_P2=32, BLOCK=4096, GREEDY=greedy, HAS_U=has_u,
                 SEED_FROM_PTR=not has_u, DISTINCT=not has_p or without, HAS_P=has_p,
                 WITHOUT=without)  # fmt: skip
    assert _cubin(compile_for_hopper(k.tree_kernel, const, warps=8))


@pytest.mark.parametrize("has_u", [True, False])
def test_traversal_kernel(has_u):
    from specsample.backends import _triton_traversal as k

    const = dict(N_P2=64, D_P2=16, BLOCK=4096, HAS_U=has_u, SEED_FROM_PTR=not has_u)
    assert _cubin(compile_for_hopper(k.traversal_kernel, const, warps=8))


SERVING_VARIANTS = [
    ("bf16", True, True, True, True, True, 1, 2048),
    ("fp32", False, True, False, True, True, 4, 512),
    ("fp16", True, False, False, False, False, 16, 32),
]


@pytest.mark.parametrize("rows_first", [False, True])
@pytest.mark.parametrize(
    "dtype, target_logits, has_draft, draft_logits, top_k, top_p, rows, block", SERVING_VARIANTS
)
def test_serving_kernel(
    dtype, target_logits, has_draft, draft_logits, top_k, top_p, rows, block, rows_first
):
    from specsample.backends import _triton_serving as k

    shift = k.SHIFTS[dtype]
    const = dict(K_P2=8, ROWS=rows, BLOCK=block, TARGET_LOGITS=target_logits,
                 HAS_DRAFT=has_draft, DRAFT_LOGITS=draft_logits, USE_TOP_K=top_k,
                 USE_TOP_P=top_p, Q_SHIFT=shift, D_SHIFT=shift,
                 ROWS_FIRST=rows_first)  # fmt: skip
    pointers = {"q_ptr": "*" + dtype, "d_ptr": "*" + dtype}
    assert _cubin(compile_for_hopper(k.serving_kernel, const, pointers, warps=8))


@pytest.mark.parametrize(
    "dtype, target_logits, has_draft, draft_logits, top_k, top_p, rows, block", SERVING_VARIANTS
)
def test_serving_rows_kernel(
    dtype, target_logits, has_draft, draft_logits, top_k, top_p, rows, block
):
    from specsample.backends import _triton_serving as k

    shift = k.SHIFTS[dtype]
    const = dict(ROWS=rows, BLOCK=block, TARGET_LOGITS=target_logits, HAS_DRAFT=has_draft,
                 DRAFT_LOGITS=draft_logits, USE_TOP_K=top_k, USE_TOP_P=top_p, Q_SHIFT=shift,
                 D_SHIFT=shift)  # fmt: skip
    pointers = {"q_ptr": "*" + dtype, "d_ptr": "*" + dtype}
    assert _cubin(compile_for_hopper(k.serving_rows_kernel, const, pointers, warps=8))
