"""`preflab objectives`: every registered objective with its parameters, reference need, extras and paper."""
from __future__ import annotations

import dataclasses
import inspect
import json
import re

_FIELD = re.compile(r"^\s+(\w+)\s*:[^=#]*=[^#]*#\s*(.+?)\s*$")


def param_meanings(cls) -> dict[str, str]:
    """{parameter: its one-line meaning}, from the `# comment` after each field in the objective's dataclass
    (the class's own source and its bases'); a field without a comment maps to ""."""
    import dataclasses

    meanings: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        for line in source.splitlines():
            match = _FIELD.match(line)
            if match:
                meanings[match.group(1)] = match.group(2)
    return {f.name: meanings.get(f.name, "") for f in dataclasses.fields(cls)}


def unset_beta_default(name: str, class_default) -> float | None:
    """The beta a `task: dpo` run of objective `name` trains at when its config leaves beta out, where that differs
    from the class default `preflab objectives` prints (else None): TRL's loss types train at TRL's 0.1 (CPOConfig's
    for simpo and alphapo, whose classes declare the SimPO / AlphaPO papers' 2.0 / 2.5; preflab.objectives._own_beta),
    so the listing says both. Online-only objectives (grpo, rloo: their recipe's TRL config sets beta) are left out."""
    from preflab.objectives import _class_for
    from preflab.objectives._own_beta import RUN_DEFAULT_BETA, resolve_unset_beta

    if getattr(_class_for(name), "online_trainer", "") or not isinstance(class_default, (int, float)):
        return None
    run_default = resolve_unset_beta("dpo", name) or RUN_DEFAULT_BETA
    return run_default if run_default != class_default else None


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
        if args.name:  # one objective: every parameter on its own line with its meaning
            from preflab.objectives import _class_for

            meanings = param_meanings(_class_for(args.name))
            print("    params:" + ("" if info["params"] else " -"))
            for key, default in info["params"].items():
                shown = "(no default: set it)" if default is dataclasses.MISSING else repr(default)
                meaning = meanings.get(key, "")
                run_beta = unset_beta_default(info["name"], default) if key == "beta" else None
                if run_beta is not None:
                    meaning = (f"{meaning}; " if meaning else "") + (
                        f"a run whose config leaves beta out trains at TRL's {run_beta:g}, not {default!r}: "
                        f"write beta: {default!r} for the paper's value")
                print(f"      {key} = {shown}" + (f"  # {meaning}" if meaning else ""))
        else:
            run_beta = unset_beta_default(info["name"], info["params"].get("beta"))
            params = ", ".join(f"{k}={v!r}" + (f" (unset in a run: {run_beta:g})" if k == "beta" and run_beta
                                                 is not None else "") for k, v in info["params"].items())
            print(f"    params: {params or '-'}")
        if info["required_extras"] or info["token_needs"]:
            print(f"    extras: {info['required_extras'] + info['token_needs']}")
        if info["produced_extras"]:  # the objective's extras producer (preflab.loops.extras_producer)
            print(f"    computed at every step by {info['extras_producer']} in `preflab train` (not data columns): "
                  f"{info['produced_extras']}")
        elif info["gradient_extras"]:
            print(f"    policy log-probs with gradient, computed by the loop (not data columns): "
                  f"{info['gradient_extras']}")
        if args.name and info["modality"] == "text" and info["batch"] != "ListBatch":
            # what its rewards/* and logps/* are (report.metric_meanings splits the report's panels by them; a
            # diffusion objective's are denoising errors, docs/diffusion.md; a list objective logs neither)
            from preflab.objectives import _class_for

            cls = _class_for(args.name)
            print(f"    logs: rewards/* = {cls.reward_meaning}; logps/* = {cls.logps_meaning}")
        print(f"    paper: {info['paper']}")
        print(f"    checked against: {info['checked_against']}")
    return 0
