"""The tree benchmark (``specsample bench --tree``): ``Backend.verify_tree`` on EAGLE-2-shaped trees.

Each cell is one ``(kind, B, N, V)``: every request drafts an EAGLE-2-shaped tree of N nodes
(:func:`specsample.trees.eagle2_shaped`, top-k 4 below N = 8, else 8, as deep as it needs), and the
tree is verified in one of three kinds:

- ``greedy``: children are the draft row's top tokens; accept the child equal to the target argmax;
- ``target-only``: random mode with ``draft_probs=None`` (EAGLE-2 / SGLang's target-only rule);
- ``draft-probs``: random mode with draft probabilities, children drawn without replacement.

Rows are LLM-like as in :mod:`specsample.workloads`: target ``softmax(3 z)``, draft ``softmax(3 z +
s e)`` with ``s = 1`` (a draft that agrees with the target about as often as a good drafter).

**The floor** of a call is what it must read, from the measured walks (the backend's own outputs
in the warm-up): ids and parents, the drafted entries it gathers, plus the full rows the rule needs:
greedy, every target row along the walk (an argmax reads the whole row); target-only, the last
position's row (the final draw's normalizer) and nothing else in full; draft-probs, the target and
draft rows of every position where a child was rejected (the residual's normalizer) and the last
position's row. The time floor is those bytes at the measured copy bandwidth, or one launch,
whichever is larger.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from .presets import PRESETS
from .timing import TimingPolicy

KINDS = ("greedy", "target-only", "draft-probs")
SCHEMA = "specsample.tree-bench/1"


@dataclass(frozen=True)
class TreePreset:
    """A grid of tree cells plus a timing policy."""

    name: str
    description: str
    batch: tuple[int, ...]
    nodes: tuple[int, ...]
    vocab: tuple[int, ...]
    kinds: tuple[str, ...] = KINDS
    policy: TimingPolicy = field(default_factory=TimingPolicy)


TREE_PRESETS: dict[str, TreePreset] = {
    "tree": TreePreset(
        name="tree",
        description="the GPU tree grid: B 1,8,64,256 x N 8,32,64 x V 32000,128256",
        batch=(1, 8, 64, 256),
        nodes=(8, 32, 64),
        vocab=(32000, 128256),
        policy=replace(PRESETS["standard"].policy, budget_s=2.0),
    ),
    "tree-quick": TreePreset(
        name="tree-quick",
        description="a CPU in a minute or two: B 1,8 x N 8,32 x V 4096",
        batch=(1, 8),
        nodes=(8, 32),
        vocab=(4096,),
        policy=replace(PRESETS["quick"].policy, max_samples=50),
    ),
    "tree-tiny": TreePreset(
        name="tree-tiny",
        description="seconds; for tests",
        batch=(1, 3),
        nodes=(8,),
        vocab=(64,),
        policy=PRESETS["tiny"].policy,
    ),
}


def tree_shape(n: int, generator: torch.Generator) -> torch.Tensor:
    """An EAGLE-2-shaped tree of ``n`` nodes (parents ``[n]`` int64)."""
    import torch
    from specsample import trees

    if n == 0:
        return torch.empty(0, dtype=torch.int64)
    topk = 4 if n <= 16 else 8
    # six draft steps, as EAGLE-2 runs; the builder keeps the n best candidates, so the tree's
    # depth and width follow the draft's scores
    return trees.eagle2_shaped(topk, 6, n, generator=generator)


def tree_workload(
    kind: str, batch: int, nodes: int, vocab: int, seed: int, device: str
) -> dict[str, Any]:
    """The arguments of one ``verify_tree`` cell.

    Returns:
        ``draft_token_ids`` [B, N] int64, ``parents`` [B, N] int64, ``draft_probs`` [B, N, V]
        float32 or None, ``target_probs`` [B, N+1, V] float32, ``mode``, ``draft_sampling``.
    """
    import torch
    from specsample import trees

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    g = torch.Generator().manual_seed(seed)
    parents = torch.stack([tree_shape(nodes, g) for _ in range(batch)]) if batch else None
    if parents is None:
        parents = torch.empty(0, nodes, dtype=torch.int64)
    dev_g = torch.Generator(device=device).manual_seed(seed + 1)
    z = torch.randn(batch, nodes + 1, vocab, generator=dev_g, device=device)
    target = torch.softmax(3.0 * z, dim=-1)
    draft_rows = torch.softmax(3.0 * z + torch.randn(z.shape, generator=dev_g, device=device), -1)
    ids = torch.zeros(batch, nodes, dtype=torch.int64)
    parent_rows = torch.zeros(batch, nodes, dtype=torch.int64)  # the position a node was drawn at
    widest = max((max(map(len, trees.children(parents[b])), default=0) for b in range(batch)),
                 default=0)  # fmt: skip
    if widest:
        flat = draft_rows.reshape(-1, vocab)
        if kind == "draft-probs":  # without replacement from the draft row
            picks = torch.multinomial(flat, widest, replacement=False, generator=dev_g)
        else:  # the draft's top tokens, as EAGLE-2 expands
            picks = flat.topk(widest, dim=-1).indices
        picks = picks.reshape(batch, nodes + 1, widest).cpu()
        for b in range(batch):
            for a, kids in enumerate(trees.children(parents[b])):
                if kids:
                    ids[b, kids] = picks[b, a, : len(kids)]
                    parent_rows[b, kids] = a
    draft_probs = None
    if kind == "draft-probs":
        index = parent_rows.to(device).unsqueeze(-1).expand(batch, nodes, vocab)
        draft_probs = draft_rows.gather(1, index)
    return {
        "draft_token_ids": ids.to(device),
        "parents": parents.to(device),
        "draft_probs": draft_probs,
        "target_probs": target,
        "mode": "greedy" if kind == "greedy" else "random",
        "draft_sampling": "without_replacement" if kind == "draft-probs" else None,
    }


def must_read_bytes(kind: str, args: dict[str, Any], accepted_nodes: torch.Tensor) -> float:
    """Bytes one call must read, from the walks in ``accepted_nodes`` ([B, D] int64, -1 after the
    path): see the module docstring."""
    from specsample import trees

    ids, parents = args["draft_token_ids"], args["parents"].cpu()
    B, N = ids.shape
    V = args["target_probs"].shape[-1]
    row = V * args["target_probs"].element_size()
    fixed = B * N * (ids.element_size() + parents.element_size())
    total = float(fixed)
    walks = accepted_nodes.cpu()
    for b in range(B):
        path = [int(x) for x in walks[b] if int(x) >= 0]
        kids = trees.children(parents[b])
        visited = [0] + [node + 1 for node in path]  # positions along the walk
        total += sum(len(kids[a]) for a in visited) * 4 * (2 if kind == "draft-probs" else 1)
        if kind == "greedy":
            total += len(visited) * row
        elif kind == "target-only":
            total += row
        else:
            rejected = 0
            for depth, a in enumerate(visited):
                chosen = path[depth] if depth < len(path) else None
                if kids[a] and chosen != kids[a][0]:
                    rejected += 1  # a rejected first child: the residual's normalizer
            total += (2 * rejected + 1) * row
    return total


def run_tree_bench(
    preset: TreePreset,
    backends: list[str] | None,
    device: str,
    *,
    kinds: tuple[str, ...] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Time every cell of ``preset`` on every backend that claims it.

    Returns:
        A results document: ``schema``, ``preset``, ``device``, ``environment``,
        ``copy_bandwidth_Bps``, ``launch_floor_s`` and ``cells`` (one per kind x B x N x V x
        backend: ``status`` ok / skipped / error, ``median_s``, ``timing``, ``launches``,
        ``mean_accepted``, ``must_read_bytes``, ``floor_s``, ``ratio_to_floor``).
    """
    import torch
    from specsample import get_backend, list_backends
    from tqdm.auto import tqdm

    from .environment import collect_environment
    from .launches import count_launches
    from .timing import Timer, copy_bandwidth, launch_floor

    kinds = kinds or preset.kinds
    infos = {i.name: i for i in list_backends()}
    names = backends or [n for n, i in infos.items() if i.available]
    timer = Timer(device, preset.policy)
    bandwidth = copy_bandwidth(torch.device(device))["bandwidth_Bps"]
    one_launch = launch_floor(device, preset.policy).get("median_s") if "cuda" in device else None
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "preset": preset.name,
        "device": device,
        "environment": collect_environment(device),
        "copy_bandwidth_Bps": bandwidth,
        "launch_floor_s": one_launch,
        "cells": [],
    }
    grid = [(k, b, n, v) for k in kinds for v in preset.vocab for n in preset.nodes
            for b in preset.batch]  # fmt: skip
    with tqdm(total=len(grid) * len(names), disable=not progress, unit="cell", desc="tree") as bar:
        for kind, batch, nodes, vocab in grid:
            args = tree_workload(kind, batch, nodes, vocab, seed=0, device=device)
            for name in names:
                cell = {"backend": name, "kind": kind, "batch": batch, "nodes": nodes,
                        "vocab": vocab}  # fmt: skip
                doc["cells"].append(cell)
                bar.update(1)
                reason = _skip_reason(infos.get(name), kind, device)
                if reason:
                    cell.update(status="skipped", reason=reason)
                    continue
                try:
                    cell.update(_time_cell(get_backend(name), kind, args, timer, count_launches))
                except Exception as exc:  # one failing cell does not stop the sweep
                    cell.update(status="error", reason=f"{type(exc).__name__}: {exc}")
                    continue
                floor = cell["must_read_bytes"] / bandwidth if bandwidth else 0.0
                floor = max(floor, one_launch or 0.0)
                cell["floor_s"] = floor
                cell["ratio_to_floor"] = cell["median_s"] / floor if floor else None
    return doc


def _skip_reason(info: Any, kind: str, device: str) -> str | None:
    import torch

    if info is None:
        return "not registered"
    if not info.available:
        return f"unavailable: {info.reason}"
    caps = info.capabilities
    mode = "greedy" if kind == "greedy" else "random"
    if mode not in caps.tree_modes:
        return f"tree mode {mode!r} not claimed"
    sampling = {"target-only": "target_only", "draft-probs": "without_replacement"}.get(kind)
    if sampling and sampling not in caps.tree_sampling:
        return f"tree sampling {sampling!r} not claimed"
    if torch.device(device).type not in caps.devices:
        return f"does not run on {device}"
    return None


def _time_cell(backend: Any, kind: str, args: dict[str, Any], timer: Any, count: Any) -> dict:
    ids, parents = args["draft_token_ids"], args["parents"]
    kw = {"mode": args["mode"]}
    if args["draft_sampling"]:
        kw["draft_sampling"] = args["draft_sampling"]
    outputs: list[Any] = []

    def call(i: int) -> Any:
        return backend.verify_tree(ids, parents, args["draft_probs"], args["target_probs"], **kw)

    m = timer.measure(call, on_warmup_output=outputs.append)
    timing = m.to_dict(keep_samples=False)
    last = outputs[-1]
    if bool((last.status != 0).any()):
        raise RuntimeError(f"flagged requests on valid input: status {last.status.tolist()}")
    launches = count(lambda: call(0), args["target_probs"].device)
    return {
        "status": "ok",
        "median_s": timing["median"],
        "timing": timing,
        "launches": launches,
        "mean_accepted": float((last.num_emitted - 1).double().mean()),
        "must_read_bytes": must_read_bytes(kind, args, last.accepted_nodes),
    }


def tree_summary(doc: dict[str, Any]) -> str:
    """A terminal table of a tree results document: one line per timed cell."""
    from tabulate import tabulate

    rows = []
    for c in doc["cells"]:
        if c.get("status") != "ok":
            continue
        launches = c.get("launches") or {}
        rows.append([
            c["backend"], c["kind"], c["batch"], c["nodes"], c["vocab"],
            f"{c['median_s'] * 1e6:.1f}", f"{c['mean_accepted']:.2f}",
            "-" if c.get("ratio_to_floor") is None else f"{c['ratio_to_floor']:.2f}x",
            launches.get("kernels", "-"), launches.get("host_syncs", "-"),
        ])  # fmt: skip
    skipped = sum(c.get("status") == "skipped" for c in doc["cells"])
    errors = [c for c in doc["cells"] if c.get("status") == "error"]
    head = [
        "backend",
        "kind",
        "B",
        "N",
        "V",
        "median us",
        "accepted",
        "x floor",
        "kernels",
        "syncs",
    ]
    text = f"tree benchmark ({doc['preset']}, {doc['device']}): {len(rows)} cells timed, "
    text += f"{skipped} skipped (not claimed or unavailable), {len(errors)} errors\n"
    text += tabulate(rows, headers=head)
    for c in errors[:5]:
        text += f"\nerror: {c['backend']} {c['kind']} B={c['batch']} N={c['nodes']}: {c['reason']}"
    return text
