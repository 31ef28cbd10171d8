"""Show why torch.compile cannot speed up the loop backend: run with TORCH_LOGS=graph_breaks.

TORCH_LOGS=graph_breaks python examples/compile_the_loop.py
"""

from __future__ import annotations

import torch
from specsample.backends.torch_loop import TorchLoopBackend
from specsample.workloads import make_workload


def main() -> None:
    w = make_workload(4, 4, 1000, acceptance="medium", seed=0)
    u = torch.rand(4, 5, generator=torch.Generator().manual_seed(0))
    backend = TorchLoopBackend()
    compiled = torch.compile(backend.verify)
    out = compiled(w.draft_token_ids, w.draft_probs, w.target_probs, uniforms=u)
    eager = backend.verify(w.draft_token_ids, w.draft_probs, w.target_probs, uniforms=u)
    assert torch.equal(out.token_ids, eager.token_ids)
    counters = torch._dynamo.utils.counters
    print(f"graph breaks: {sum(counters['graph_break'].values())}")
    for reason, count in counters["graph_break"].most_common(5):
        print(f"  {count:4d} x {reason.splitlines()[0][:110]}")


if __name__ == "__main__":
    main()
