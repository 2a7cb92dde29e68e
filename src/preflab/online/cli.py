"""`preflab train CONFIG` with `task: online` (routed here by preflab.cli, so that loops/ never imports online/)."""
from __future__ import annotations


def train_task(args) -> int:
    from preflab.config import preflight
    from preflab.loops.cli import config_from_args, print_summary, quiet_third_party_warnings
    from preflab.online.run import OnlineRun

    quiet_third_party_warnings()
    cfg = config_from_args(args)
    preflight(cfg)
    if cfg.online_task == "vision_dataset":
        from preflab.online.vision import VisionOnlineRun

        return print_summary(cfg, VisionOnlineRun(cfg).train())
    return print_summary(cfg, OnlineRun(cfg).train())
