"""Ladder-diagram programs (seed #43, RAFT + DPO): the program graph type, a synthetic task, and the builders.

    program.py     parse / serialise / canonicalise, attribute-aware isomorphism, substitution distance
    synthetic.py   templated instruction -> program rows with a known answer
    builders.py    retrieval-augmented SFT prompts (never the query), graph-edit negatives for DPO
    recipe.py      SFT then DPO on a tiny model; program-level accuracy (isomorphism) before / after
"""
from preflab.ladder.program import (LadderError, canonical, isomorphic, parse_program, serialize,
                                    substitution_distance)

__all__ = ["LadderError", "parse_program", "serialize", "canonical", "isomorphic", "substitution_distance"]
