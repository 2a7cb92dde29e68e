"""`preflab objectives`: every registered objective with its parameters, reference need, extras and paper."""
from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("objectives", help="list every objective with its parameters, needs and paper")
    p.add_argument("name", nargs="?", help="show one objective in full")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args) -> int:
    from preflab.objectives import list_objectives, objective_info

    names = [args.name] if args.name else list_objectives()
    infos = [objective_info(n) for n in names]
    if args.json:
        print(json.dumps(infos, indent=2, default=str))
        return 0
    for info in infos:
        ref = "reference" if info["needs_reference"] else "reference-free"
        alias = f" (aliases: {', '.join(info['aliases'])})" if info["aliases"] else ""
        print(f"{info['name']}{alias}  [{info['modality']}, {info['batch']}, {ref}]")
        print(f"    {info['summary']}")
        params = ", ".join(f"{k}={v!r}" for k, v in info["params"].items())
        print(f"    params: {params or '-'}")
        if info["required_extras"] or info["token_needs"]:
            print(f"    extras: {info['required_extras'] + info['token_needs']}")
        if info["gradient_extras"]:
            print(f"    policy log-probs with gradient, computed by the loop (not data columns): "
                  f"{info['gradient_extras']}")
        print(f"    paper: {info['paper']}")
    return 0
