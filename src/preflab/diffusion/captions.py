"""DCPO's caption perturbation builder, offline: a rejected image's caption made less faithful by word substitution.

"Dual Caption Preference Optimization for Diffusion Models" (Saeidi et al., 2025; methods §45) perturbs captions
with the DIPPER paraphraser at lexical diversity 40 / 60 / 80 (weak / medium / strong). preflab has no paraphrase
model offline, so `perturb_caption` replaces that share of the words (0.4 / 0.6 / 0.8, at least one) with words drawn
from the other captions of the data set, at positions and with draws fixed by `seed` (preflab's substitute: the
caption keeps its length and order, and loses that share of its content). A caption built this way is the rejected
image's conditioning c_l; c_w stays the preferred image's caption (or the prompt).
"""
from __future__ import annotations

import random

from preflab.errors import ConfigError

STRENGTHS = {"weak": 0.4, "medium": 0.6, "strong": 0.8}


def perturb_caption(caption: str, strength: str, vocabulary: list[str], seed: int) -> str:
    """`caption` with round(share * words) (>= 1) words replaced by other words of `vocabulary`."""
    if strength not in STRENGTHS:
        raise ConfigError(f"caption_perturbation must be one of none, {', '.join(STRENGTHS)}; got {strength!r}.")
    words = caption.split()
    rng = random.Random(seed)
    k = min(len(words), max(1, round(STRENGTHS[strength] * len(words))))
    for i in sorted(rng.sample(range(len(words)), k)):
        choices = [w for w in vocabulary if w != words[i]]
        if choices:
            words[i] = rng.choice(choices)
    return " ".join(words)


def caption_vocabulary(captions: list[str]) -> list[str]:
    """Sorted distinct words of the captions (the substitution pool)."""
    return sorted({w for c in captions for w in c.split()})
