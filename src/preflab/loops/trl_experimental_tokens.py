"""Where a run of `orpo` / `cpo` / `simpo` / `alphapo` trains other token ids than TRL 1.16's experimental
ORPOTrainer and CPOTrainer would on the same rows, counted and said (user trial 27).

preflab tokenizes every preference pair as TRL 1.16's DPOTrainer does (`data.tokenize`): a text prompt starts with
bos only when `tokenizer(text)` puts one there (`text_bos`), and a conversational response ends with what the chat
template renders (its end of turn). TRL's experimental trainers keep the older `tokenize_row`
(`trl/experimental/orpo/orpo_trainer.py`, `trl/experimental/cpo/cpo_trainer.py`, TRL 1.16):

- `add_bos_token_if_needed`: the prompt gets `tokenizer.bos_token_id` in front whenever the tokenizer has one and
  the prompt does not start with it, also where `tokenizer(text)` adds none (GPT-2, GPT-NeoX, OLMo, Phi-3, SmolLM2:
  the model then trains on a bos it never sees at inference);
- `add_eos_token_if_needed`: each response gets `eos_token_id` appended unless it already ends with it, so a
  conversational response whose template ends its turn with something else (ChatML's `<|im_end|>\\n`, Llama 3's
  `<|eot_id|>`) gets one more token after the end of turn;
- `maybe_apply_chat_template` cuts `prompt + response` rendered as text at the rendered prompt's length (the common
  character prefix), where preflab cuts a response opening with another turn than the assistant's at the common
  token prefix (`boundary.split_common_tokens`).

preflab keeps DPOTrainer's ids (the sequences the model sees at inference); this module says how many rows differ
so a TRL user comparing losses or metrics knows why (docs/configuration.md, "Coming from TRL").
"""
from preflab.objectives.base import objective_parts

# preflab objectives that TRL trains with its experimental ORPOTrainer (orpo) or CPOTrainer (cpo, simpo, alphapo)
EXPERIMENTAL_TRAINERS = {"orpo": "ORPOTrainer", "cpo": "CPOTrainer", "simpo": "CPOTrainer", "alphapo": "CPOTrainer"}


def experimental_trainers(objective) -> list[str]:
    """The TRL experimental trainers (ORPOTrainer, CPOTrainer) whose loss a part of `objective` is, in order."""
    names = []
    for part in objective_parts(objective):
        module = type(part).__module__.rsplit(".", 1)[-1]  # an objective's module is its name (DESIGN.md)
        trainer = EXPERIMENTAL_TRAINERS.get(module)
        if trainer and trainer not in names:
            names.append(trainer)
    return names


def token_differences(examples, items, tokenizer) -> dict:
    """Counts of kept pairs whose ids TRL's experimental trainers would build otherwise:
    `bos`: text prompts that do not start with the tokenizer's bos (those trainers prepend it);
    `eos`: conversational responses (chosen and rejected counted apart) that do not end with eos (they append it);
    `turn_cut`: conversational rows with a response opening with another turn than the assistant's (they cut the
    rendered text at the prompt's text, preflab at the common token prefix: the two cuts may differ).
    examples: the rows' PairExamples; items: their TokenizedPairs (a skipped row has none; matched by row_id)."""
    by_row = {ex.row_id: ex for ex in examples}
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    counts = {"bos": 0, "eos": 0, "turn_cut": 0}
    for item in items:
        example = by_row.get(getattr(item, "row_id", None))
        if example is None or not hasattr(item, "chosen_ids"):
            continue
        if not isinstance(example.prompt, list):
            counts["bos"] += bos is not None and item.prompt_ids[:1] != [bos]
            continue
        counts["eos"] += sum(ids[-1:] != [eos] for ids in (item.chosen_ids, item.rejected_ids))
        counts["turn_cut"] += any(isinstance(r, list) and r[:1] and r[0].get("role") != "assistant"
                                  for r in (example.chosen, example.rejected))
    return counts


def experimental_tokens_note(objective, examples, items, tokenizer) -> str | None:
    """The data note for a run whose loss TRL trains with an experimental trainer, when some kept pair's ids differ
    from that trainer's (`token_differences`); None otherwise."""
    trainers = experimental_trainers(objective)
    if not trainers:
        return None
    counts = token_differences(examples, items, tokenizer)
    said = []
    if counts["bos"]:
        said.append(f"{counts['bos']} text prompt(s) start without the bos {tokenizer.bos_token!r}, which "
                    "`tokenizer(text)` does not add (TRL's trainer prepends it)")
    if counts["eos"]:
        said.append(f"{counts['eos']} conversational response(s) end with the chat template's end of turn, not eos "
                    f"{tokenizer.eos_token!r} (TRL's trainer appends one more eos id)")
    if counts["turn_cut"]:
        said.append(f"{counts['turn_cut']} conversational row(s) have a response opening with another turn than the "
                    "assistant's, cut at the common token prefix (TRL's trainer cuts the rendered text at the "
                    "prompt's text)")
    if not said:
        return None
    names = " / ".join(f"TRL's experimental {t}" for t in trainers)
    return (f"these rows are tokenized as TRL 1.16's DPOTrainer tokenizes them, not as {names}: "
            + "; ".join(said) + ". Losses and metrics on them differ from that trainer's; preflab trains the "
            "sequences the model sees at inference (docs/configuration.md, 'Coming from TRL').")
