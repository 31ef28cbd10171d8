"""Tree verification on a GPU: a backend's ``verify_tree`` against its bytes floor, exactness first.

Each cell builds EAGLE-2-shaped trees (top-k 4, depth 6, N nodes, distinct sibling tokens) whose
target rows put most of their mass on the children, checks the backend against torch-vectorized
(status, path and tokens; explicit uniforms), then times it with the runner's timer and the
``standard`` preset's policy (CUDA events, L2 flushed). The floor is the bytes the rule must read
over the copy bandwidth: the drafted entries (ids, parents, coins, ``q`` at each node's token),
plus the rows along the walk: every row of the accepted path and the last position's in greedy
mode, only the last position's row with the target-only rule.

    python tools/tree_bench.py --backend triton --batches 1,8,64,256 --nodes 8,32,64
"""

from __future__ import annotations

import argparse
import sys


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="tools/tree_bench.py",
        description="verify_tree of one backend against its bytes floor (GPU).",
    )
    ap.add_argument("--backend", default="triton", help="backend whose verify_tree is timed")
    ap.add_argument("--batches", type=_ints, default=[1, 8, 64, 256], help="B values")
    ap.add_argument("--nodes", type=_ints, default=[8, 32, 64], help="N values")
    ap.add_argument("--vocab", type=_ints, default=[32000, 128256], help="V values")
    ap.add_argument(
        "--modes", default="greedy,target_only", help="comma-separated: greedy, target_only"
    )
    return ap.parse_args(argv)


def make_trees(B: int, N: int, V: int, device: str, seed: int = 0):
    """``(ids [B, N], parents [B, N], q [B, N+1, V] float32, u [B, N+1])``: EAGLE-2-shaped trees,
    distinct sibling tokens, each child's token given about 0.8 / (children) of its parent's row."""
    import torch
    from specsample import trees

    g = torch.Generator().manual_seed(seed)
    parents = torch.stack([trees.eagle2_shaped(4, 6, N, generator=g) for _ in range(B)])
    ids = torch.zeros(B, N, dtype=torch.int64)
    boost = torch.zeros(B, N + 1, V)
    for b in range(B):
        for a, kids in enumerate(trees.children(parents[b])):
            toks = torch.randperm(V, generator=g)[: len(kids)]
            ids[b, kids] = toks
            boost[b, a, toks] = 0.8 / max(len(kids), 1)
    q = torch.softmax(torch.randn(B, N + 1, V, generator=g) * 2, -1) * 0.2 + boost
    q = q / q.sum(-1, keepdim=True)
    u = torch.rand(B, N + 1, generator=g)
    return ids.to(device), parents.to(device), q.to(device), u.to(device)


def floor_bytes(out, N: int, V: int, greedy: bool) -> int:
    """Bytes the rule must read for the outputs ``out`` (see the module docstring)."""
    B = out.num_emitted.shape[0]
    entries = B * N * (8 + 8 + 4 + (0 if greedy else 4)) + B * 12
    rows = int(out.num_emitted.sum()) if greedy else B
    return entries + rows * V * 4


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import specsample
    import torch
    from specsample.reports.presets import get_preset
    from specsample.reports.timing import Timer, copy_bandwidth

    if not torch.cuda.is_available():
        print("tree_bench: needs a CUDA device", file=sys.stderr)
        return 2
    backend = specsample.get_backend(args.backend)
    ref = specsample.get_backend("torch-vectorized")
    timer = Timer("cuda", get_preset("standard").policy)
    bandwidth = copy_bandwidth("cuda")["bandwidth_Bps"]
    print(f"copy bandwidth {bandwidth / 1e9:.0f} GB/s (read + written); backend {args.backend}")
    print("mode | B | N | V | mean path | MB | floor us | kernel us | x floor")
    failed = 0
    for mode in args.modes.split(","):
        greedy = mode == "greedy"
        for V in args.vocab:
            for N in args.nodes:
                for B in args.batches:
                    ids, parents, q, u = make_trees(B, N, V, "cuda", seed=B + N)
                    kw = dict(mode="greedy" if greedy else "random")
                    if not greedy:
                        kw["uniforms"] = u
                    got = backend.verify_tree(ids, parents, None, q, **kw)
                    want = ref.verify_tree(ids, parents, None, q, **kw)
                    same = all(
                        torch.equal(getattr(got, f), getattr(want, f))
                        for f in ("status", "num_emitted", "accepted_nodes", "token_ids")
                    )
                    if not same:
                        failed += 1
                        print(f"{mode} B={B} N={N} V={V}: differs from torch-vectorized")
                    nbytes = floor_bytes(want, N, V, greedy)
                    floor = nbytes / bandwidth * 1e6

                    def call(ids=ids, parents=parents, q=q, kw=kw):
                        backend.verify_tree(ids, parents, None, q, **kw)

                    t = timer.measure(lambda i, call=call: call()).to_dict(keep_samples=False)
                    us = t["median"] * 1e6
                    path = float(want.num_emitted.float().mean()) - 1
                    print(
                        f"{mode} | {B} | {N} | {V} | {path:.2f} | {nbytes / 1e6:.2f} | "
                        f"{floor:.1f} | {us:.1f} | {us / floor:.2f}",
                        flush=True,
                    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
