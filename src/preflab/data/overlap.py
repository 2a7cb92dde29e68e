"""Repeated rows and train/eval overlap, counted for the data report (nothing is dropped).

    overlap_report(train_examples, eval_examples) -> {"duplicate_train_examples": n, "eval_prompts_in_train": m}
    training_overlap_counts(train_examples, eval_examples) -> {"prompts": n, "pairs": m, "rows": N}  (preflab eval)
    training_overlap_counts(train, evals, prompt_key=..., row_key=...)   the same count by another row's keys
    sft_overlap_counts(sft_sequences(rows), eval_pairs) -> {"prompts": n, "pairs": m, "rows": N}  (an SFT run's)

duplicate_train_examples: train examples whose content (prompt, responses, label; not the row id or extras) repeats
an earlier train example exactly: the run trains on them more than once per epoch. eval_prompts_in_train: eval
examples whose prompt is also the prompt of a train example (normal for data with several pairs per prompt, but
then the eval measures prompts the policy was trained on).

A streaming run (preflab.data.stream) counts the same two numbers over its first pass with `StreamOverlap`: it holds
a 16-byte BLAKE2b digest of each train example's content and of each train prompt (not the rows: about 180 bytes a
row in two Python sets, against the tokens the in-memory run holds), and drops them when the first pass ends; later
passes read the same rows again and are not counted again.
"""
from __future__ import annotations

import bisect
import dataclasses
import hashlib
import json
from dataclasses import dataclass


def _key(value) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=repr)


def _content(example) -> str:
    fields = {f.name: getattr(example, f.name) for f in dataclasses.fields(example)
              if f.name not in ("row_id", "extras")}
    return _key(fields)


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def prompt_digests(examples) -> list[bytes]:
    """The digest of each example's prompt (StreamOverlap.eval_prompts)."""
    return [_digest(_key(example.prompt)) for example in examples]


@dataclass
class StreamOverlap:
    """overlap_report's counts over a stream's first pass, one example at a time (see the module docstring).
    eval_prompts: the eval set's prompt digests (prompt_digests), shared by reference so it can be filled after the
    stream is opened. The counts are JSON state (to_dict / load, restored with the stream's position); the
    digest sets are not: a resume in the first pass re-notes the rows before its position (`see(..., count=False)`)."""

    duplicate_train_examples: int = 0
    eval_prompts_in_train: int = 0
    desirable: int = 0  # unpaired examples by label (one_label_note)
    undesirable: int = 0
    eval_prompts: list = dataclasses.field(default_factory=list, repr=False)

    def __post_init__(self):
        self._contents: set[bytes] | None = set()
        self._prompts: set[bytes] = set()

    def see(self, examples, count: bool = True) -> None:
        """Note train `examples` (counted unless `count` is False: rows a resume skips were counted before)."""
        if self._contents is None:  # the first pass has ended
            return
        for example in examples:
            content = _digest(_content(example))
            if count:
                self.duplicate_train_examples += content in self._contents
            self._contents.add(content)
            self._prompts.add(_digest(_key(example.prompt)))

    def count_labels(self, items) -> None:
        """Count the labels of tokenized unpaired `items` (one_label_note reads the tokenized examples)."""
        if self._contents is not None:
            for item in items:
                self.desirable += bool(item.label)
                self.undesirable += not item.label

    def end_first_pass(self) -> None:
        """The first pass is read: count the eval prompts seen in training, and drop the digests."""
        if self._contents is not None:
            self.eval_prompts_in_train = sum(d in self._prompts for d in self.eval_prompts)
            self._contents, self._prompts = None, set()

    def to_dict(self) -> dict:
        return {"duplicate_train_examples": self.duplicate_train_examples,
                "eval_prompts_in_train": self.eval_prompts_in_train, "desirable": self.desirable,
                "undesirable": self.undesirable, "first_pass_complete": self._contents is None}

    def load(self, saved: dict) -> None:
        """Take the counts of `to_dict` (a resume); eval_prompts stays the shared list."""
        for name in ("duplicate_train_examples", "eval_prompts_in_train", "desirable", "undesirable"):
            setattr(self, name, int(saved.get(name, 0)))
        self._contents, self._prompts = (None if saved.get("first_pass_complete") else set()), set()

    def report(self) -> dict:
        """overlap_report's dict of the rows read so far (all of the first pass once it has ended)."""
        in_train = (self.eval_prompts_in_train if self._contents is None
                    else sum(d in self._prompts for d in self.eval_prompts))
        return {"duplicate_train_examples": self.duplicate_train_examples, "eval_prompts_in_train": in_train}


def count_repeats(keys) -> int:
    """How many of `keys` (hashable, in order) equal an earlier one: the repeated-row count of text, vision
    (loops.vlm.repeated_vision_pairs) and diffusion (diffusion.data.repeated_image_pairs) rows. None keys (rows
    without a content key) are not counted."""
    seen, repeated = set(), 0
    for key in keys:
        if key is not None:
            repeated += key in seen
            seen.add(key)
    return repeated


def repeats_note(count: int, rows: str, same: str) -> str | None:
    """The note for `count` train rows that repeat an earlier one (count_repeats), worded once for the text
    (overlap_notes), vision (loops.vlm) and diffusion (loops.diffusion) runs; rows: what a row is ("example(s)",
    "pair(s)"), same: what makes two equal. None for none."""
    if not count:
        return None
    return f"{count} train {rows} repeat an earlier one exactly (same {same}): each copy is trained on."


def overlap_report(train, evals, prompt_of=None, content_of=None) -> dict:
    """The module docstring's two counts. prompt_of / content_of: a row's prompt and its content (default: a loaded
    example's, prompt_key and content_key); a DPA run's rated rows, which are dicts, give their own
    (preflab.reward_models.multi_objective.rated_overlap_report)."""
    prompt_of, content_of = prompt_of or prompt_key, content_of or _content
    duplicates = count_repeats(content_of(example) for example in train)
    train_prompts = {_key(prompt_of(example)) for example in train}
    in_train = sum(_key(prompt_of(example)) in train_prompts for example in evals)
    return {"duplicate_train_examples": duplicates, "eval_prompts_in_train": in_train}


def prompt_key(example):
    """A row's prompt as load_rows made it (text, or conversational messages): training_overlap_counts' default
    rule for a shared prompt."""
    return example.prompt


def content_key(example) -> str:
    """Every field of a row but row_id and extras (prompt, chosen, rejected; as overlap_report compares):
    training_overlap_counts' default rule for a shared row."""
    return _content(example)


def image_digest(image) -> bytes:
    """16-byte BLAKE2b digest of an image's pixels: a PIL image by its mode, size and decoded bytes, a tensor by
    its dtype, shape and bytes. Two files holding the same pixels (a copy, another name) get the same digest; the
    same file re-encoded lossily does not."""
    h = hashlib.blake2b(digest_size=16)
    if hasattr(image, "tobytes") and hasattr(image, "mode"):  # PIL.Image
        h.update(repr((image.mode, image.size)).encode())
        h.update(image.tobytes())
    else:
        h.update(repr((str(image.dtype), tuple(image.shape))).encode())
        h.update(image.contiguous().cpu().numpy().tobytes())
    return h.digest()


def training_overlap_counts(train, evals, prompt_key=prompt_key, row_key=content_key) -> dict:
    """How many of the examples `evals` the examples `train` already hold, for `preflab eval` against a run's
    training rows: "prompts" counts eval examples whose prompt_key equals a train example's, "pairs" those whose
    row_key (default: the whole content, prompt, chosen, rejected; every field but row_id and extras, as
    overlap_report compares) equals a train example's, "rows" is len(evals). Fields are compared as the loader made
    them (conversational messages as their message lists), not as tokens. row_key None: the train rows are
    prompts only (an online run's), and "pairs" is None. The keys of the other kinds of rows: a vision pair's
    (data.vision.vision_prompt_key / vision_row_key), an image pair's (diffusion.data.image_pair_key). One pass
    over each side; the train side is held as 16-byte BLAKE2b digests of the keys (JSON, bytes as repr) only; a key
    None (a row without a pair) matches nothing."""
    def digest(key):
        return None if key is None else _digest(_key(key))

    prompts, contents = set(), set()
    for example in train:
        prompts.add(digest(prompt_key(example)))
        if row_key is not None:
            contents.add(digest(row_key(example)))
    prompts.discard(None)
    contents.discard(None)
    in_prompts = in_pairs = rows = 0
    for example in evals:
        rows += 1
        in_prompts += digest(prompt_key(example)) in prompts
        if row_key is not None:
            in_pairs += digest(row_key(example)) in contents
    return {"prompts": in_prompts, "pairs": in_pairs if row_key is not None else None, "rows": rows}


def overlap_notes(report: dict, n_eval: int, repeats: bool = True, model: str = "the policy") -> list[str]:
    """The lines to print for a non-zero overlap report. repeats False: the eval prompts' line only (an online run's
    prompt rows, where a repeated prompt is no repeated example: summary.json still counts them). model: what was
    trained ("the reward model" for task: reward)."""
    notes = [repeats_note(report["duplicate_train_examples"], "example(s)", "prompt and responses")] \
        if report["duplicate_train_examples"] and repeats else []
    if report["eval_prompts_in_train"]:
        notes.append(f"{report['eval_prompts_in_train']} of {n_eval} eval example(s) have a prompt that is also a "
                     f"train prompt: the eval then measures prompts {model} was trained on.")
    return notes


@dataclass(frozen=True)
class SFTSequence:
    """One SFT training row (TRL's forms) as the text it trains on: `prompt` (None for a text row, whose prompt is
    not delimited) and `sequence`, the whole row: prompt + completion (two strings joined, or two message lists),
    a messages row's messages, a text row's text. No extras: data.holdout.split_eval_fraction then holds rows out by
    position, as it held out the run's tokenized rows."""

    row_id: int
    prompt: object
    sequence: object


def joined(prompt, response):
    """prompt + response as one SFT sequence: two strings concatenated, two message lists concatenated; None for
    any other mix (a string prompt with a conversational response is no sequence an SFT row could hold)."""
    if isinstance(prompt, str) and isinstance(response, str):
        return prompt + response
    if isinstance(prompt, list) and isinstance(response, list):
        return prompt + response
    return None


def sft_sequence(row_id: int, row: dict, text_field: str = "text") -> SFTSequence | None:
    """The SFTSequence of a raw SFT row (text under `text_field`, messages, or prompt + completion); None for a row
    of none of these forms (tokenized rows, bad rows: the run could not read them as text either)."""
    if isinstance(row.get(text_field), str) and "messages" not in row and "prompt" not in row:
        return SFTSequence(row_id, None, row[text_field])
    if isinstance(row.get("messages"), list) and "prompt" not in row:
        messages = row["messages"]
        last_is_answer = messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant"
        return SFTSequence(row_id, messages[:-1] if last_is_answer else None, messages)
    if "prompt" in row and "completion" in row:
        whole = joined(row["prompt"], row["completion"])
        return SFTSequence(row_id, row["prompt"], whole) if whole is not None else None
    return None


def sft_overlap_counts(train: list[SFTSequence], evals) -> dict:
    """training_overlap_counts' record for a `task: sft` run's rows `train` and eval preference pairs `evals`:

    prompts  eval pairs whose prompt the run trained on: equal to an SFT row's prompt (prompt + completion, or a
             messages row's turns before its last assistant turn), or a string prompt that a text row begins with
             (a text row trains on its whole text, its prompt included), or whose pair is counted below
    pairs    eval pairs with a response the run trained on: prompt + chosen or prompt + rejected (joined) equals an SFT
             row's whole sequence
    rows     len(evals)

    Compared as the loader made the fields (strings, message lists), not as tokens."""
    def digest(value):
        return _digest(_key(value))

    prompts = {digest(s.prompt) for s in train if s.prompt is not None}
    sequences = {digest(s.sequence) for s in train}
    texts = sorted(s.sequence for s in train if s.prompt is None and isinstance(s.sequence, str))

    def a_text_begins_with(prompt) -> bool:
        if not isinstance(prompt, str) or not texts:
            return False
        at = bisect.bisect_left(texts, prompt)  # the texts that begin with `prompt` sort right from here
        return at < len(texts) and texts[at].startswith(prompt)

    in_prompts = in_pairs = rows = 0
    for example in evals:
        rows += 1
        trained = any(whole is not None and digest(whole) in sequences
                      for whole in (joined(example.prompt, example.chosen), joined(example.prompt, example.rejected)))
        in_pairs += trained
        in_prompts += trained or digest(example.prompt) in prompts or a_text_begins_with(example.prompt)
    return {"prompts": in_prompts, "pairs": in_pairs, "rows": rows}


def sft_row_overlap_counts(train: list[SFTSequence], evals: list[SFTSequence]) -> dict:
    """training_overlap_counts' record for a `task: sft` run's rows `train` and eval SFT rows `evals` (preflab eval
    --task distill), compared as the loader made the fields (strings, message lists), not as tokens:

    prompts  eval rows with a prompt the run trained on: the row's prompt equals a training row's prompt, or its
             whole sequence is counted below (a text row has no delimited prompt)
    pairs    eval rows the run trained on: the whole sequence (a text, prompt + completion, a messages row) equals a
             training row's
    rows     len(evals)"""
    def digest(value):
        return _digest(_key(value))

    prompts = {digest(s.prompt) for s in train if s.prompt is not None}
    sequences = {digest(s.sequence) for s in train}
    in_prompts = in_rows = 0
    for example in evals:
        trained = digest(example.sequence) in sequences
        in_rows += trained
        in_prompts += trained or (example.prompt is not None and digest(example.prompt) in prompts)
    return {"prompts": in_prompts, "pairs": in_rows, "rows": len(evals)}


def response_overlap_counts(train, evals) -> dict:
    """training_overlap_counts' record for rows of (prompt, response) that a run trains on one by one (a DPA attribute
    reward model's rated rows) and eval rows given as (prompt, [responses]) (a rated row: its response; a direction
    pair: chosen and rejected):

    prompts  eval rows whose prompt is a training row's prompt
    pairs    eval rows with a response the run trained on: (prompt, response) equal to a training row's
    rows     len(evals)

    Compared as the loader made the fields (strings, message lists), not as tokens; the training side is held as
    16-byte digests."""
    prompts, rows_seen = set(), set()
    for prompt, response in train:
        prompts.add(_digest(_key(prompt)))
        rows_seen.add(_digest(_key([prompt, response])))
    in_prompts = in_pairs = rows = 0
    for prompt, responses in evals:
        rows += 1
        in_prompts += _digest(_key(prompt)) in prompts
        in_pairs += any(_digest(_key([prompt, response])) in rows_seen for response in responses)
    return {"prompts": in_prompts, "pairs": in_pairs, "rows": rows}
