"""The demo's synthetic task, "loud echo": the prompt lists a few words; the user prefers them echoed in capitals.

    prompt   "echo: sun cat map"
    best     "SUN CAT MAP"          true reward 1.0
    common   "sun cat map"          true reward 0.0 (right words, wrong style)

true_reward(prompt, response) = (1/n) sum_i 1[response word i == upper(prompt word i)], 0 if the word count is
wrong. SFT data echoes in capitals only 40% of the time, so the SFT model answers in lower case; the
preference pairs prefer capitals over lower case (and over capitals with a wrong word), so DPO should move the
greedy answer to capitals on prompts it never saw.
"""
from __future__ import annotations

import random

LOUD_FRACTION = 0.4  # share of SFT rows echoed in capitals

WORDS = ["sun", "cat", "map", "dog", "red", "box", "pen", "cup", "hat", "log", "net", "owl", "jam", "kit", "fig",
         "bus", "car", "toy", "bee", "ant", "ice", "oak", "elf", "gem"]


def make_prompt(rng: random.Random) -> str:
    return "echo: " + " ".join(rng.sample(WORDS, rng.randint(2, 3)))


def prompt_words(prompt: str) -> list[str]:
    return prompt.split(":", 1)[1].split()


PROMPT_FORM = "'echo: ' and the words to echo, e.g. 'echo: sun cat map'"


def prompt_problem(prompt) -> str | None:
    """Why `prompt` is not a loud-echo prompt that true_reward can score, or None: the task's prompts are strings
    that start with 'echo:' and list at least one word after it (PROMPT_FORM)."""
    if not isinstance(prompt, str):
        return f"a {type(prompt).__name__}, not a string (the demo task's prompts are plain text)"
    if not prompt.lstrip().startswith("echo:"):
        return "it does not start with 'echo:'"
    if not prompt_words(prompt):
        return "it has no words after 'echo:'"
    return None


def true_reward(prompt: str, response: str) -> float:
    problem = prompt_problem(prompt)
    if problem is not None:  # before: an IndexError (no ':') or a ZeroDivisionError (no words) named nothing
        raise ValueError(f"the demo task's true reward scores only its own prompts ({PROMPT_FORM}); "
                         f"{str(prompt)[:80]!r}: {problem}.")
    want = [w.upper() for w in prompt_words(prompt)]
    got = response.split()
    if len(got) != len(want):
        return 0.0
    return sum(a == b for a, b in zip(got, want)) / len(want)


def _wrong_word(words: list[str], rng: random.Random) -> list[str]:
    out = list(words)
    i = rng.randrange(len(out))
    out[i] = rng.choice([w for w in WORDS if w not in words]).upper()
    return out


def make_splits(seed: int = 0, n_train: int = 600, n_eval: int = 64, loud_fraction: float = LOUD_FRACTION):
    """(sft_rows, pair_rows, heldout_prompts): rows in TRL's standard form; held-out prompts are unseen."""
    rng = random.Random(seed)
    seen, prompts = set(), []
    while len(prompts) < n_train + n_eval:
        p = make_prompt(rng)
        if p not in seen:
            seen.add(p)
            prompts.append(p)
    train, heldout = prompts[:n_train], prompts[n_train:]
    sft, pairs = [], []
    for p in train:
        words = prompt_words(p)
        loud, quiet = " ".join(w.upper() for w in words), " ".join(words)
        target, other = (loud, quiet) if rng.random() < loud_fraction else (quiet, loud)
        sft.append({"prompt": p + "\n", "chosen": target, "rejected": other})
        rejected = quiet if rng.random() < 0.7 else " ".join(_wrong_word(words, rng)).upper()
        pairs.append({"prompt": p + "\n", "chosen": loud, "rejected": rejected})
    return sft, pairs, heldout
