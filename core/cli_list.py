"""``specsample list``: the registered backends as a table (or JSON)."""

from __future__ import annotations

import argparse
import json


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for machines")
    parser.add_argument(
        "--available", action="store_true", help="show only the backends available here"
    )


def main(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from .registry import list_backends

    infos = list_backends()
    if args.available:
        infos = [i for i in infos if i.available]
    if args.json:
        print(json.dumps([i.to_dict() for i in infos], indent=2))
        return 0
    rows = []
    for info in infos:
        caps = info.capabilities
        rows.append(
            [
                info.name,
                "yes" if info.available else "no",
                ",".join(caps.devices) if caps else "",
                ",".join(caps.modes) if caps else "",
                ",".join(d.replace("float", "f").replace("bf", "bf") for d in caps.dtypes)
                if caps
                else "",
                (
                    "1"
                    if caps.fused
                    else (str(caps.launches_per_call) if caps.launches_per_call else "varies")
                )
                if caps
                else "",
                info.reason if not info.available else info.description,
            ]
        )
    print(
        tabulate(
            rows,
            headers=["backend", "available", "devices", "modes", "dtypes", "launches", "notes"],
            tablefmt="simple",
        )
    )
    return 0
