"""Deprecated location: the Python API of online runs is `preflab.online.api` (0.2); this name goes in 0.3.

`preflab.online` builds on `preflab.loops`, so loops/ keeps only this alias (the same module object).
"""
from preflab._renamed import alias_module

alias_module(__name__, "preflab.online.api")
