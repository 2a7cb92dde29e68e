"""Deprecated: renamed `preflab.verifiers` (rule rewards and program verifiers) in 0.2."""
from preflab._renamed import alias_package

alias_package(__name__, "preflab.verifiers", {m: m for m in ("boxes", "dstc", "otc", "vision_r1")})
