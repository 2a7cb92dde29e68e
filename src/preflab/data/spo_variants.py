"""SPO's degree variants (methods/objectives.md §C #9): each response with j = 0..J of its key content units deleted.

    units = longest_words(response_ids, tokenizer)            # the extractor (pluggable: objective's unit_extractor)
    variants, report = build_degree_variants(examples, tokenizer, degrees=J, seed=seed, max_length=...)
    variants[i]["chosen"] == [(0, ids_0), (1, ids_1), ..., (J, ids_J)]   # (label j, response ids with j units cut)

Label j = the number of units deleted ("preference degree": more deletion, lower degree). For each response the
extractor ranks its units; the first J are taken, put in a random order drawn from Random(f"{seed}:{row_id}:{side}")
(deterministic for a seed, independent of the batch or the process), and variant j deletes the first j of that
order, so the deletions are nested (variant j+1 = variant j minus one more unit). The prompt is never touched: the
variants are response token ids, scored after the example's own prompt ids. Deleting tokens only shortens a response
that already fits max_length; a variant over max_length (impossible unless the example was built outside the
tokenizer's cut) is dropped and counted, never cut.

A response with fewer than J units gets fewer variants (j = 0..units); its missing degrees have label -100 (ignored
by the degree loss) and are counted in the report.

Extractor contract: extractor(response_ids, tokenizer) -> list of units, best first, each a list of token positions
in response_ids (disjoint). The default, `longest_words`, is a documented rule with no model or word list beyond a
short English stop-word list; the paper (Li et al. 2024, arXiv:2409.17791) extracts key content with an LLM, which
preflab does not call (unverified design, see the objective's docstring).
"""
from __future__ import annotations

import importlib
import random
from typing import Callable

from preflab.errors import ConfigError

STOPWORDS = frozenset(
    "a an the and or but if then so of to in on at by for with from as is are was were be been being am do does did "
    "have has had it its this that these those i you he she we they me him her us them my your his our their not no "
    "yes can could will would should may might must shall there here what which who whom whose when where why how "
    "all any each some such than too very just also only own same both few more most other into over under again "
    "further once about above below up down out off".split())


def words(response_ids: list[int], tokenizer) -> list[tuple[str, list[int]]]:
    """(word text, token positions) of each whitespace-separated word of the response, in order. A token whose text
    starts with whitespace starts a new word; a token of whitespace only is kept with the word that follows it (so
    deleting a word deletes the space before it). Special tokens (EOS) belong to no word and end the one before."""
    special = set(getattr(tokenizer, "all_special_ids", None) or ())
    out: list[tuple[str, list[int]]] = []
    pending: list[int] = []  # whitespace-only tokens waiting for the next word
    boundary = True
    for pos, tid in enumerate(response_ids):
        if tid in special:
            pending, boundary = [], True
            continue
        text = tokenizer.decode([tid])
        if not text.strip():
            pending.append(pos)
            continue
        if pending or boundary or text[:1].isspace():
            out.append((text.strip(), pending + [pos]))
            pending, boundary = [], False
        else:
            word, positions = out[-1]
            out[-1] = (word + text.strip(), positions + [pos])
    return out


def longest_words(response_ids: list[int], tokenizer) -> list[list[int]]:
    """The default extractor: the response's content words (at least one letter, not a stop word, case-insensitive),
    longest first (characters of the word), ties by position; each unit the token positions of one word."""
    content = [(i, w, pos) for i, (w, pos) in enumerate(words(response_ids, tokenizer))
               if any(c.isalpha() for c in w) and w.lower().strip(".,;:!?\"'()") not in STOPWORDS]
    content.sort(key=lambda t: (-len(t[1]), t[0]))
    return [pos for _, _, pos in content]


EXTRACTORS: dict[str, Callable] = {"longest_words": longest_words}


def extractor_for(name: str) -> Callable:
    """A registered extractor by name, or "module:function" (a callable with the extractor contract)."""
    if name in EXTRACTORS:
        return EXTRACTORS[name]
    if ":" in name:
        module, attr = name.split(":", 1)
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise ConfigError(f"spo_degree unit_extractor {name!r}: cannot import it ({err}).") from None
    raise ConfigError(f"spo_degree unit_extractor {name!r}: not one of {sorted(EXTRACTORS)}; give a registered "
                      "name or 'module:function'.")


def response_variants(response_ids: list[int], units: list[list[int]], degrees: int,
                      rng: random.Random) -> list[tuple[int, list[int]]]:
    """[(j, response ids with j units deleted)] for j = 0..min(J, len(units)); nested deletions in a random order of
    the first J units."""
    chosen = [list(u) for u in units[:degrees]]
    rng.shuffle(chosen)
    out, cut = [(0, list(response_ids))], set()
    for j, unit in enumerate(chosen, start=1):
        cut.update(unit)
        out.append((j, [t for p, t in enumerate(response_ids) if p not in cut]))
    return out


def build_degree_variants(examples, tokenizer, degrees: int, seed: int, max_length: int | None = None,
                          extractor: Callable = longest_words, sides=("chosen", "rejected")) -> tuple[list, dict]:
    """([{side: [(label, response ids)]} per example], report). Report: responses, responses with fewer than J units,
    degrees missing (label -100), variants dropped over max_length."""
    if degrees < 1:
        raise ConfigError(f"spo_degree degrees (J) must be >= 1, got {degrees}.")
    out, short, missing, over = [], 0, 0, 0
    for ex in examples:
        per = {}
        for side in sides:
            ids = list(getattr(ex, f"{side}_ids"))
            units = extractor(ids, tokenizer)
            variants = response_variants(ids, units, degrees, random.Random(f"{seed}:{ex.row_id}:{side}"))
            kept = []
            for j, v in variants:
                if j > 0 and not v:
                    continue  # nothing left to score
                if max_length and len(ex.prompt_ids) + len(v) > max_length:
                    over += 1
                    continue
                kept.append((j, v))
            short += len(units) < degrees
            missing += degrees + 1 - len(kept)
            per[side] = kept
        out.append(per)
    report = {"responses": len(examples) * len(sides), "degrees": degrees,
              "responses_with_fewer_units_than_degrees": short, "variants_missing": missing,
              "variants_over_max_length": over}
    return out, report


def report_note(report: dict, split: str) -> str | None:
    """A line for the run's output when some variants are missing, else None."""
    if not report["variants_missing"]:
        return None
    return (f"spo_degree ({split}): {report['responses_with_fewer_units_than_degrees']} of {report['responses']} "
            f"responses have fewer than J={report['degrees']} key units; {report['variants_missing']} degree variants "
            f"are missing (label -100, not in the degree loss; {report['variants_over_max_length']} of them over "
            "max_length).")
