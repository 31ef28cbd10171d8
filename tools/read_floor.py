"""The bytes floor, measured: what one launch that only reads N bytes costs under the runner's
timer, beside N / copy bandwidth, for the bytes of greedy cells; then the greedy kernel itself on
the same cells, so the kernel's distance to a plain read is a same-machine ratio (GPU).

Greedy mode must read every target row up to and including the first mismatch, so at large batch
its floor is bytes over bandwidth; a single read-only reduction (``torch.sum``) over the same bytes
shows how close to that floor one launch can get at all.

    python tools/read_floor.py --batch 256 --k 8 --backend cuda-cpp
"""

from __future__ import annotations

import argparse
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="tools/read_floor.py",
        description="A plain read of a greedy cell's bytes against the greedy kernel (GPU).",
    )
    ap.add_argument("--backend", default="cuda-cpp", help="backend whose greedy mode is timed")
    ap.add_argument("--batch", type=int, default=256, help="B")
    ap.add_argument("--k", type=int, default=8, help="K")
    ap.add_argument(
        "--cells",
        default="32000:low,32000:high,128256:low",
        help="comma-separated VOCAB:ACCEPT cells",
    )
    return ap.parse_args(argv)


def greedy_bytes(draft_token_ids, target_probs) -> int:
    """Bytes greedy mode must read: each request's target rows up to its first mismatch
    (the bonus row when every draft matches). ``draft_token_ids`` [B, K], ``target_probs``
    [B, K+1, V]."""
    K = draft_token_ids.shape[1]
    argmax = target_probs[:, :K].argmax(-1)
    accepted = (draft_token_ids == argmax).int().cumprod(-1).sum(-1)
    rows = int((accepted + 1).clamp(max=K + 1).sum())
    return rows * target_probs.shape[-1] * target_probs.element_size()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import specsample
    import torch
    from specsample.reports.presets import get_preset
    from specsample.reports.timing import Timer, copy_bandwidth
    from specsample.workloads import acceptance_length_for, make_workload

    if not torch.cuda.is_available():
        print("read_floor: needs a CUDA device", file=sys.stderr)
        return 2
    backend = specsample.get_backend(args.backend)
    timer = Timer("cuda", get_preset("standard").policy)
    bandwidth = copy_bandwidth("cuda")["bandwidth_Bps"]

    def median_us(fn) -> float:
        return timer.measure(lambda i: fn()).to_dict(keep_samples=False)["median"] * 1e6

    print(f"copy bandwidth {bandwidth / 1e9:.0f} GB/s (read + written)")
    print(f"greedy B={args.batch} K={args.k}: V accept | MB | bytes/bw | torch.sum | kernel (us)")
    for cell in args.cells.split(","):
        vocab, _, accept = cell.partition(":")
        w = make_workload(
            args.batch,
            args.k,
            int(vocab),
            device="cuda",
            seed=0,
            acceptance_length=acceptance_length_for(accept or "low", args.k),
            greedy_drafter=True,
        )
        nbytes = greedy_bytes(w.draft_token_ids, w.target_probs)
        x = torch.rand(nbytes // 4, device="cuda")
        sink = torch.empty((), device="cuda")
        floor = nbytes / bandwidth * 1e6
        t_sum = median_us(lambda x=x, sink=sink: torch.sum(x, dim=0, out=sink))
        t_kernel = median_us(
            lambda w=w: backend.verify(w.draft_token_ids, None, w.target_probs, mode="greedy")
        )
        print(
            f"{vocab} {accept} | {nbytes / 1e6:7.1f} | {floor:8.1f} | {t_sum:8.1f} "
            f"({t_sum / floor:.2f}x) | {t_kernel:8.1f} ({t_kernel / floor:.2f}x)",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
