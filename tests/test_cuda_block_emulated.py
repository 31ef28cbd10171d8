"""The block-verification kernels' own source (``csrc/kernel_block.cuh``) run on the CPU against the
float64 reference, token for token: the split kernel (``chunks`` blocks per request meeting in a
global workspace; the block that counts last combines and draws) and the one-block kernel.

``tests/cuda_emulation/cuda_host.h`` stands in for the CUDA built-ins (a fiber per CUDA thread),
so the host C++ compiler builds the kernel file unchanged into ``block_host.cpp``. The blocks of
a launch run one after another, in ascending or descending order, so either end of the request
can be the block that counts last; the workspace starts as garbage and every request's counter
must be back at zero afterwards. Block sizes below the GPU's put several vectors of a segment on
each lane (the loop after the first vectors, which the kernel requests before its decisions).
Every comparison is exact: status, ``num_emitted`` and all tokens (the sums add in another order
than the reference's; ``compare_block_to_reference`` proves any difference a near-tie, and these
inputs have none). What it cannot show: races between real threads and blocks, the device's
float16 path (inline PTX, not emulated), and speed. Skipped without a C++ compiler.
"""

from __future__ import annotations

import subprocess

import pytest
import torch
from emulation_host import CXX, build_host_program, write_tensor
from specsample import VerifyOutput
from specsample.conformance.block_common import compare_block_to_reference
from specsample.reference_block import reference_verify_block
from specsample.status import Status

pytestmark = pytest.mark.skipif(CXX is None, reason="no C++ compiler (c++, g++ or $CXX)")


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    return build_host_program(
        "block_host.cpp", tmp_path_factory.mktemp("block_host"), "-ffp-contract=off"
    )


def _case(B, K, V, *, seed, with_p=True, noise=4.0):
    """Random rows (peaked and flat mixed), drafts drawn from p (its logits off q's by up to
    ``noise``: small values make long accepted prefixes), float32 coins (CPU, float32)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, K + 1, V, generator=g) * 3
    q = torch.softmax(logits, -1)
    noise = torch.rand(B, K, 1, generator=g) * noise
    p = torch.softmax(logits[:, :K] + noise * torch.randn(B, K, V, generator=g), -1)
    ids = torch.multinomial(p.reshape(B * K, V), 1, generator=g).reshape(B, K)
    u = torch.rand(B, K + 1, generator=g)
    return ids, (p if with_p else None), q, u


def _run(program, tmp_path, ids, p, q, u, *, chunks, threads=256, descending=False):
    """The kernel on the CPU: ``(token_ids, num_emitted, status)``."""
    B, K1, V = q.shape
    dtype = {torch.float32: "f32", torch.bfloat16: "bf16"}[q.dtype]
    meta = f"{B} {K1 - 1} {V} {dtype} {int(p is not None)} {chunks} {threads} {int(descending)}"
    (tmp_path / "meta.txt").write_text(meta + "\n")
    write_tensor(tmp_path, "ids", ids.to(torch.int64))
    write_tensor(tmp_path, "target", q)
    if p is not None:
        write_tensor(tmp_path, "draft", p)
    write_tensor(tmp_path, "uniforms", u.to(torch.float32))
    result = subprocess.run([str(program), str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    tok = torch.frombuffer(bytearray((tmp_path / "tokens.bin").read_bytes()), dtype=torch.int64)
    num = torch.frombuffer(bytearray((tmp_path / "num_out.bin").read_bytes()), dtype=torch.int64)
    st = torch.frombuffer(bytearray((tmp_path / "status.bin").read_bytes()), dtype=torch.int32)
    return tok.view(B, K1), num, st


def _exact(got, ids, p, q, u, label):
    tok, num, st = got
    ref = reference_verify_block(ids, p, q, uniforms=u)
    assert torch.equal(st, ref.status), (label, st, ref.status)
    assert torch.equal(num, ref.num_emitted), (label, num, ref.num_emitted)
    assert torch.equal(tok, ref.token_ids), (label, tok, ref.token_ids)
    if int(ref.status.abs().sum()) == 0:
        out = VerifyOutput(tok, num, st)
        assert compare_block_to_reference(None, ids, p, q, u, label=label, out=out) == 0


@pytest.mark.parametrize(
    "B, K, V, chunks, threads",
    [
        (1, 8, 32003, 7, 256),  # a row that does not fill whole vectors; 4-5 vectors per lane
        (3, 11, 3200, 5, 256),  # K beyond one group of rows read at once
        (2, 3, 1500, 40, 256),  # more chunks than a warp scans at once; some chunks empty
        (1, 8, 4096, 132, 64),  # the B = 1 shape: about one vector per lane, 2 warps per block
        (2, 1, 700, 3, 32),  # K = 1, one warp per block (it decides and streams)
    ],
)
@pytest.mark.parametrize("with_p", [True, False], ids=["p", "p=None"])
@pytest.mark.parametrize("descending", [False, True], ids=["first-last", "last-first"])
def test_split_kernel_exact(program, tmp_path, B, K, V, chunks, threads, with_p, descending):
    ids, p, q, u = _case(B, K, V, seed=B * 100 + K * 10 + chunks, with_p=with_p)
    got = _run(
        program, tmp_path, ids, p, q, u, chunks=chunks, threads=threads, descending=descending
    )
    _exact(got, ids, p, q, u, f"split B={B} K={K} V={V} chunks={chunks} threads={threads}")


def test_split_kernel_second_row_group(program, tmp_path):
    """K = 12 with drafts close to the target, so that most requests accept past the first
    kBlockSplitRows = 8 rows: the second group's sums (read after the decisions) decide them."""
    ids, p, q, u = _case(6, 12, 1200, seed=5, noise=0.3)
    ref = reference_verify_block(ids, p, q, uniforms=u)
    assert int((ref.num_emitted > 9).sum()) >= 3, ref.num_emitted  # the inputs do what they say
    got = _run(program, tmp_path, ids, p, q, u, chunks=4, threads=64)
    _exact(got, ids, p, q, u, "split K=12")


@pytest.mark.parametrize("B, K, V", [(2, 8, 3001), (3, 2, 64)])
def test_one_block_kernel_exact(program, tmp_path, B, K, V):
    ids, p, q, u = _case(B, K, V, seed=7 + V)
    _exact(_run(program, tmp_path, ids, p, q, u, chunks=0, threads=128), ids, p, q, u, "one-block")


def test_split_kernel_bfloat16(program, tmp_path):
    ids, p, q, u = _case(2, 5, 6000, seed=3)
    p, q = p.to(torch.bfloat16), q.to(torch.bfloat16)
    got = _run(program, tmp_path, ids, p, q, u, chunks=9, threads=128)
    _exact(got, ids, p, q, u, "split bf16")


def test_split_kernel_status(program, tmp_path):
    """Flagged requests next to clean ones, through the split kernel: an id out of range, a NaN in
    a drafted row, a negative value in the bonus row with every draft accepted (the bonus row's
    bad value counts only then), a coin outside [0, 1): each gets the reference's status bits and
    all -1 tokens; the clean ones their tokens."""
    B, K, V = 5, 4, 900
    ids, p, q, u = _case(B, K, V, seed=11)
    ids[0, 2] = V + 3
    p[1, 1, 17] = float("nan")
    q[2, :K] = p[2]  # every draft accepted (w = 1, thresholds 1), then a bad bonus row
    q[2, K, 5] = -0.25
    u[3, 1] = 1.5
    got = _run(program, tmp_path, ids, p, q, u, chunks=6, threads=128)
    _exact(got, ids, p, q, u, "split status")
    assert got[2][4] == 0 and all(int(s) != 0 for s in got[2][:4])
    assert int(got[2][0]) & int(Status.BAD_DRAFT_ID)
