"""Repeated rows and train/eval overlap, counted for the data report (nothing is dropped).

    overlap_report(train_examples, eval_examples) -> {"duplicate_train_examples": n, "eval_prompts_in_train": m}

duplicate_train_examples: train examples whose content (prompt, responses, label; not the row id or extras) repeats
an earlier train example exactly: the run trains on them more than once per epoch. eval_prompts_in_train: eval
examples whose prompt is also the prompt of a train example (normal for data with several pairs per prompt, but
then the eval measures prompts the policy was trained on).
"""
from __future__ import annotations

import dataclasses
import json


def _key(value) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=repr)


def _content(example) -> str:
    fields = {f.name: getattr(example, f.name) for f in dataclasses.fields(example)
              if f.name not in ("row_id", "extras")}
    return _key(fields)


def overlap_report(train, evals) -> dict:
    seen, duplicates = set(), 0
    for example in train:
        content = _content(example)
        duplicates += content in seen
        seen.add(content)
    train_prompts = {_key(example.prompt) for example in train}
    in_train = sum(_key(example.prompt) in train_prompts for example in evals)
    return {"duplicate_train_examples": duplicates, "eval_prompts_in_train": in_train}


def overlap_notes(report: dict, n_eval: int) -> list[str]:
    """The lines to print for a non-zero overlap report."""
    notes = []
    if report["duplicate_train_examples"]:
        notes.append(f"{report['duplicate_train_examples']} train example(s) repeat an earlier one exactly (same "
                     "prompt and responses): each copy is trained on.")
    if report["eval_prompts_in_train"]:
        notes.append(f"{report['eval_prompts_in_train']} of {n_eval} eval example(s) have a prompt that is also a "
                     "train prompt: the eval then measures prompts the policy was trained on.")
    return notes
