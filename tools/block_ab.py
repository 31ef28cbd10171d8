"""A/B of compile-time variants and launch shapes of the block-verification kernel, on a GPU.

Each variant is the kernel header compiled by NVRTC (through CuPy, ``rule="block"``'s module) with
its own ``-D`` options; ``default`` is the header as shipped. Every variant is first checked
against the float64 block reference with the conformance suite's comparison (explicit uniforms and
the in-kernel Philox stream), then timed with the runner's own timer and the ``standard`` preset's
policy (CUDA events, L2 flushed), rounds interleaved. Each row also shows the token rule's kernel
on the same cell and the block rule's bytes floor (a full ``q`` and ``p`` row per draft) at the
bandwidth given by ``--tbps``.

    python tools/block_ab.py "noprefetch=-DSPECSAMPLE_BLOCK_PREFETCH_BYTES=0" --batches 1,8
    python tools/block_ab.py "wave8=-DSPECSAMPLE_BLOCK_WAVE=8" --configs 0x0,16x512,8x256
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from typing import Any


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def _configs(text: str) -> list[tuple[int, int]]:
    out = []
    for item in text.split(","):
        cl, sep, nt = item.partition("x")
        if not sep or not cl.isdigit() or not nt.isdigit():
            raise argparse.ArgumentTypeError(
                f"launch shapes are CLUSTERxTHREADS, e.g. 16x512 (0x0: automatic), got {item!r}"
            )
        out.append((int(cl), int(nt)))
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="tools/block_ab.py",
        description="Exactness and timing of variants of the rule='block' CUDA kernel (GPU).",
    )
    ap.add_argument(
        "variants",
        nargs="*",
        metavar="NAME=FLAGS",
        help='a variant: name, "=", then NVRTC options, e.g. "w8=-DSPECSAMPLE_BLOCK_WAVE=8"',
    )
    ap.add_argument("--batches", type=_ints, default=[1, 8, 64, 256], help="B values timed")
    ap.add_argument("--ks", type=_ints, default=[8], help="K values timed")
    ap.add_argument("--vocabs", type=_ints, default=[32000, 128256], help="V values timed")
    ap.add_argument("--accept", default="high,low", help="acceptance regimes timed")
    ap.add_argument(
        "--configs",
        type=_configs,
        default=[(0, 0)],
        help="launch shapes CLUSTERxTHREADS timed for every variant (default 0x0: automatic)",
    )
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is shown")
    ap.add_argument("--tbps", type=float, default=3.0, help="bandwidth of the bytes floor, TB/s")
    ap.add_argument("--no-exact", action="store_true", help="skip the exactness checks")
    args = ap.parse_args(argv)
    args.variant_flags = {"default": ()}
    for spec in args.variants:
        name, sep, flags = spec.partition("=")
        if not sep or not name or name in args.variant_flags:
            ap.error(f"a variant is NAME=FLAGS with a new name, got {spec!r}")
        args.variant_flags[name] = tuple(flags.split())
    args.accept = [a for a in args.accept.split(",") if a]
    return args


class _Variant:
    """One compiled variant, shaped like a conformance target (``verify`` with ``rule=``)."""

    def __init__(self, module: Any, cluster: int = 0, threads: int = 0) -> None:
        self.module, self.cluster, self.threads = module, cluster, threads

    def launch(self, ids, draft, target, **kw):
        from specsample.backends import _cupy_block

        return _cupy_block.verify_block_torch(
            ids, draft, target, module=self.module, cluster=self.cluster, threads=self.threads, **kw
        )

    def verify(self, ids, draft, target, *, uniforms=None, generator=None, rule="block", **_):
        from specsample.contract import VerifyOutput

        tok, num, st = self.launch(ids, draft, target, uniforms=uniforms, generator=generator)
        return VerifyOutput(tok, num, st)


def check_exactness(name: str, variant: _Variant) -> int:
    """Compare one variant with the block reference over dtypes and shapes; mismatching runs."""
    import torch
    from specsample.backends import _cuda_build
    from specsample.conformance.block_common import compare_block_to_reference
    from specsample.conformance.checks import CheckFailed
    from specsample.workloads import make_workload

    shapes = [
        (1, 8, 128256, torch.float32, True),
        (5, 16, 997, torch.float16, True),
        (64, 4, 32000, torch.bfloat16, True),
        (256, 8, 32000, torch.float32, True),
        (7, 3, 1, torch.float32, True),
        (6, 8, 4099, torch.float32, False),
    ]
    bad = 0
    for (B, K, V, dtype, with_p), acc in itertools.product(shapes, ("low", "high")):
        w = make_workload(
            B, K, V, dtype=dtype, device="cuda", acceptance=acc, seed=B + K, with_draft_probs=with_p
        )
        label = f"{name} B={B} K={K} V={V} {dtype} p={with_p} {acc}"
        g = torch.Generator(device="cuda").manual_seed(1234 + B)
        seed, offset = g.initial_seed(), g.get_offset()
        philox_out = variant.verify(w.draft_token_ids, w.draft_probs, w.target_probs, generator=g)
        runs = [
            ("uniforms", torch.rand((B, K + 1), device="cuda"), None),
            ("philox", _cuda_build.philox_uniforms(seed, offset, B, K).to("cuda"), philox_out),
        ]
        for what, u, out in runs:
            try:
                compare_block_to_reference(
                    variant,
                    w.draft_token_ids,
                    w.draft_probs,
                    w.target_probs,
                    u,
                    label=f"{label} {what}",
                    out=out,
                )
            except CheckFailed as exc:
                bad += 1
                print(f"MISMATCH {exc}", flush=True)
    return bad


def floor_us(B: int, K: int, V: int, elem_bytes: int, with_p: bool, tbps: float) -> float:
    """The block rule's bytes floor in microseconds: a full q row, and a p row when given, per
    draft."""
    rows = K * (2 if with_p else 1)
    return B * rows * V * elem_bytes / (tbps * 1e12) * 1e6


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("block_ab: needs a CUDA device (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    from specsample.backends import _cupy_block, cupy_backend
    from specsample.reports.presets import get_preset
    from specsample.reports.timing import Timer
    from specsample.workloads import acceptance_length_for, make_workload

    device = torch.cuda.current_device()
    modules = {n: _cupy_block._BlockModule(device, f) for n, f in args.variant_flags.items()}
    if not args.no_exact:
        # the float64 reference takes seconds per run at B = 256: a line as each variant starts and ends
        bad = 0
        for n, m in modules.items():
            began = time.perf_counter()
            print(f"exactness {n}: checking against the float64 reference…", flush=True)
            mismatches = check_exactness(n, _Variant(m))
            print(
                f"exactness {n}: {mismatches} mismatching runs ({time.perf_counter() - began:.0f} s)",
                flush=True,
            )
            bad += mismatches
        print(f"exactness: {bad} mismatching runs over {len(modules)} variant(s)", flush=True)
        if bad:
            return 1

    timer = Timer("cuda", get_preset("standard").policy)
    columns = [(n, cl, nt) for n in modules for cl, nt in args.configs]
    heads = [n if (cl, nt) == (0, 0) else f"{n}@{cl}x{nt}" for n, cl, nt in columns]
    print(
        "median us; K V accept B | token | " + " | ".join(heads) + f" | floor@{args.tbps}TB/s",
        flush=True,
    )
    for K, V, acc, B in itertools.product(args.ks, args.vocabs, args.accept, args.batches):
        w = make_workload(
            B, K, V, device="cuda", seed=0, acceptance_length=acceptance_length_for(acc, K)
        )
        ids, draft, target = w.draft_token_ids, w.draft_probs, w.target_probs

        def token(i, ids=ids, draft=draft, target=target):
            return cupy_backend.verify_torch(ids, draft, target)

        rounds = []
        for _ in range(args.rounds):
            row = [timer.measure(token).to_dict(keep_samples=False)["median"] * 1e6]
            for n, cl, nt in columns:
                v = _Variant(modules[n], cl, nt)

                def run(i, v=v, ids=ids, draft=draft, target=target):
                    return v.launch(ids, draft, target)

                row.append(timer.measure(run).to_dict(keep_samples=False)["median"] * 1e6)
            rounds.append(row)
        medians = [statistics.median(r[j] for r in rounds) for j in range(len(columns) + 1)]
        fl = floor_us(B, K, V, target.element_size(), draft is not None, args.tbps)
        print(
            f"{K} {V} {acc} {B} | " + " | ".join(f"{t:8.2f}" for t in medians) + f" | {fl:8.2f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
