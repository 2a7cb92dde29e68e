"""The names of the recipe tasks (`task: <recipe>`, whole programs: preflab.recipes).

Names only, for the config layer (preflab.config, config_options, config_owners, scoring.compile: which tasks exist,
which options they own). preflab.recipes maps each name to its program (RECIPES, imported by name when it runs) and
checks that it lists the same names. The config layer imported that map from preflab.recipes, and the programs build
their stages' configs through the config layer: a cycle at run time (recipes -> ladder.recipe -> recipe_options ->
config -> recipes, tests/test_import_graph.py's table test).
"""
from __future__ import annotations

RECIPE_TASKS = ("icpl", "raft_ladder", "themis", "otc", "itool", "dstc", "fspo", "pro_orchestrator")
