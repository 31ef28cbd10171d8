"""``specsample e2e``: speculative generation end to end, one table per backend and batch size.

Exit status: 0 when every case ran, 1 when a case failed or every chosen backend is unavailable,
2 on a usage error. See docs/e2e.md.
"""

from __future__ import annotations

import argparse
import json
import sys

from .cli_options import (
    UsageError,
    add_backend_options,
    check_backend_names,
    check_output_file,
    device_name,
    int_list,
    nonnegative_int,
    positive_float,
    positive_int,
    selected_backends,
)

DTYPES = ("auto", "float32", "bfloat16", "float16")
SIZES = ("auto", "tiny", "small", "medium")


def configure(parser: argparse.ArgumentParser) -> None:
    models = parser.add_argument_group("models (one of --demo, or --target with --draft)")
    models.add_argument(
        "--demo",
        action="store_true",
        help="seeded demo models, no download: a target and a draft that runs its first block",
    )
    models.add_argument(
        "--target",
        metavar="PATH",
        help="a local transformers causal LM folder (needs transformers)",
    )
    models.add_argument("--draft", metavar="PATH", help="the draft model folder, with --target")
    models.add_argument(
        "--size",
        choices=SIZES,
        default="auto",
        help="demo model size (default: medium on a GPU, small on the CPU)",
    )
    models.add_argument(
        "--dtype",
        choices=DTYPES,
        default="auto",
        help="model weights (default: bfloat16 on a GPU, float32 on the CPU); probabilities "
        "are float32",
    )
    add_backend_options(parser, "every available backend")
    g = parser.add_argument_group("generation")
    g.add_argument(
        "--batch", type=int_list(1), default=[1], help="batch sizes, e.g. 1,32 (default 1)"
    )
    g.add_argument("--k", type=nonnegative_int, default=4, help="draft tokens per step (default 4)")
    g.add_argument(
        "--vocab",
        type=int_list(2),
        default=None,
        help="demo vocabulary sizes, e.g. 32000,128256 (default 32000)",
    )
    g.add_argument(
        "--tokens", type=positive_int, default=64, help="tokens generated per request (default 64)"
    )
    g.add_argument(
        "--prompt-len", type=positive_int, default=16, help="prompt tokens per request (default 16)"
    )
    g.add_argument(
        "--mode", choices=("random", "greedy"), default="random", help="(default random)"
    )
    g.add_argument(
        "--temperature", type=positive_float, default=1.0, help="logit temperature (default 1)"
    )
    g.add_argument(
        "--seed", type=nonnegative_int, default=0, help="prompts, sampling, demo weights"
    )
    g.add_argument(
        "--repeat",
        type=positive_int,
        default=1,
        metavar="N",
        help="timed runs per case, same seed; every time is the median over them (default 1)",
    )
    g.add_argument(
        "--device",
        type=device_name,
        default="auto",
        help="auto, cpu, cuda or cuda:N (default auto)",
    )
    g.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="CPU threads for torch (torch.set_num_threads; default: torch's choice). On a shared "
        "machine 1 gives steadier CPU timings",
    )
    out = parser.add_argument_group("output")
    out.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    out.add_argument("--force", action="store_true", help="replace an existing --json file")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _device(text: str) -> str:
    import torch

    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {text}: no CUDA device is visible to torch")
        index = int(text[5:]) if ":" in text else 0
        if index >= torch.cuda.device_count():
            raise UsageError(
                f"--device {text}: only {torch.cuda.device_count()} CUDA device(s) visible"
            )
    return text


def _check_models(args: argparse.Namespace) -> None:
    if args.demo and (args.target or args.draft):
        raise UsageError("--demo: give either --demo or --target/--draft, not both")
    if not args.demo and not args.target and not args.draft:
        raise UsageError("give --demo (seeded demo models) or --target PATH and --draft PATH")
    if bool(args.target) != bool(args.draft):
        flag = "--target" if args.target else "--draft"
        other = "--draft" if args.target else "--target"
        raise UsageError(f"{flag}: needs {other} PATH too")
    if args.target and args.vocab is not None:
        raise UsageError("--vocab: only for --demo (a model's vocabulary is its own)")
    if args.target and args.size != "auto":
        raise UsageError("--size: only for --demo")


def main(args: argparse.Namespace) -> int:
    _check_models(args)
    names = selected_backends(args)
    check_backend_names(names)
    out_path = check_output_file(args.json, "--json", args.force) if args.json else None

    import torch
    from tqdm.auto import tqdm

    from .decode.e2e import E2ESettings, run_e2e
    from .decode.render import notes, render_tables
    from .registry import list_backends

    device = _device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cuda = device.startswith("cuda")
    dtype_name = args.dtype if args.dtype != "auto" else ("bfloat16" if cuda else "float32")
    dtype = getattr(torch, dtype_name)
    infos = {i.name: i for i in list_backends()}
    if names is None:
        names = [n for n, i in infos.items() if i.available]
    for name in names:
        if not infos[name].available:
            print(f"{name}: unavailable: {infos[name].reason}", file=sys.stderr)
    runnable = [n for n in names if infos[n].available]
    if not runnable:
        return 1

    settings = E2ESettings(
        num_draft=args.k,
        max_new_tokens=args.tokens,
        prompt_len=args.prompt_len,
        mode=args.mode,
        temperature=args.temperature,
        seed=args.seed,
        device=device,
        repeat=args.repeat,
    )
    if args.demo:
        from .decode.demo import demo_pair
        from .decode.e2e import ModelPair

        size = args.size if args.size != "auto" else ("medium" if cuda else "small")
        vocabs = args.vocab or [32000]

        def load(vocab: int) -> ModelPair:
            pair = demo_pair(vocab, size, seed=args.seed, device=device, dtype=dtype)
            return ModelPair(pair.target, pair.draft, pair.describe())

    else:
        from .decode.hf import load_pair

        pair = load_pair(args.target, args.draft, device=device, dtype=dtype)
        vocabs = [pair.target.vocab_size]
        needed = args.prompt_len + args.tokens + 2 * args.k + 2
        context = pair.description.get("max_positions")
        if context is not None and needed > context:
            raise UsageError(
                f"--tokens {args.tokens}: a request needs up to {needed} positions (prompt, "
                f"tokens and 2K + 2 of draft room) but the models hold {context}"
            )

        def load(vocab: int) -> ModelPair:
            return pair

    total = len(vocabs) * len(args.batch) * (len(runnable) + 1)
    with tqdm(
        total=total,
        disable=args.quiet,
        unit="run",
        desc="e2e",
        dynamic_ncols=True,
        file=sys.stderr,
    ) as bar:

        def progress(label: str) -> None:
            bar.set_postfix_str(label)
            bar.update(1)

        doc = run_e2e(
            load,
            backends=runnable,
            batches=args.batch,
            vocabs=vocabs,
            settings=settings,
            progress=progress,
        )
    print(render_tables(doc))
    for line in notes(doc):
        print(line)
    if out_path is not None:
        out_path.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")
    return 1 if any(c["status"] == "error" for c in doc["cases"]) else 0
