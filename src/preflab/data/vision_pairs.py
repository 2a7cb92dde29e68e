"""Pair builders for vision preference training (cfg.vision_pairs): how rows become VisionPairExamples.

given      the rows are pairs already (TRL's vision DPO format).

pami_vdpo  PaMi-VDPO (prompt-aware multi-instance video DPO; seed #34, methods §34): rows are SFT triples
           {images or videos, prompt, response}; the rejected side is the *same response* on perturbed visual
           input, so DPO's margin becomes the input-side margin [derived, mDPO-style]:
               u = beta [(S_theta - S_ref)(y | v, x) - (S_theta - S_ref)(y | v', x)]
           K candidates v'_k = A_k(v) are drawn from the augmentation pool [derived]: spatial (flip, crop, blur,
           noise, colour shift, masking; applied to every image/frame) and, for several images/frames, temporal
           (reverse, shuffle, drop-and-repeat). "Far" selection [derived from the abstract]: with the policy and no
           gradient, d_k = S(y | v, x) - S(y | v'_k, x) and the row keeps v'_{k*}, k* = argmax_k d_k (the clip on
           which the answer is least likely: the most prompt-relevant perturbation). Deviations: the selection runs
           once, with the starting policy, when the data is prepared (not at every step). "Close" filter
           (vision_pair_params.tau_sim, off by default): only candidates with cos(E(v'), E(v)) >= tau_sim, E = the
           mean LM-input embedding at the image tokens (the model's own pooled visual features), enter the argmax.
           K = 1 is plain VDPO with one random augmentation.

cat_adpo   CAT's ambiguity-aware pairs (seed #1, methods §1) [derived from the abstract]: rows are
           {images, prompt, response (the SFT model's answer), objects: [annotated object names], rewrite?}. A
           lexicon judge flags the answer as ambiguous when it names no annotated object and uses a vague referent
           (VAGUE_TERMS); chosen = `rewrite` when given, else the answer with its first vague referent replaced by
           the annotated object(s); the pair is kept only when chosen names >= 1 annotated object and rejected
           none. The judge's rationale is kept in extras["adpo_rationale"]; dropped rows are counted by reason.
           The loss is plain DPO (sigmoid, sums over tokens), as in the released trainer (rikeilong/Bay-CAT
           ADPO_CAT/train_dpo.py; its auxiliary LM weight gamma is left at 0). A paper note (ECCV 2024, code index)
           says the paper builds the pairs the same way (the SFT model's answers on the training set, judged
           ambiguous by GPT against the reference answer, are the rejected side; GPT's precise rewrite of each is
           the chosen side: pass it as `rewrite`) and trains L_DPO + 0.1 L_SFT: `rpo_alpha: 0.1` adds that term
           (the token-mean NLL of the chosen answers; the note does not say how L_SFT is normalised).
"""
from __future__ import annotations

import re

import torch

from preflab.data.vision import VisionPairExample
from preflab.errors import ConfigError, DataError, nearest

BUILDERS = ("given", "pami_vdpo", "cat_adpo")
SPATIAL = ("flip", "crop", "blur", "noise", "colour", "mask")
TEMPORAL = ("reverse", "shuffle", "drop_repeat")
VAGUE_TERMS = ("something", "someone", "somebody", "an object", "a thing", "the thing", "it", "stuff", "an item",
               "a shape", "the shape", "an instrument", "a sound", "a colour", "a color")


def check_builder(name: str, params: dict) -> None:
    allowed = {"given": set(), "pami_vdpo": {"num_candidates", "augmentations", "seed", "tau_sim"},
               "cat_adpo": {"vague_terms"}}
    if name not in allowed:
        raise ConfigError(f"vision_pairs must be one of {BUILDERS}, got {name!r}.")
    unknown = set(params) - allowed[name]
    if unknown:
        hints = "".join(nearest(k, allowed[name]) for k in sorted(unknown))
        raise ConfigError(f"vision_pair_params {sorted(unknown)} are not parameters of the {name!r} builder;{hints} it "
                          f"takes {sorted(allowed[name]) or 'none'}.")
    for aug in params.get("augmentations", []):
        if aug not in SPATIAL + TEMPORAL:
            raise ConfigError(f"unknown PaMi-VDPO augmentation {aug!r}; choose from {SPATIAL + TEMPORAL}.")
    if int(params.get("num_candidates", 1)) < 1:
        raise ConfigError("vision_pair_params.num_candidates must be >= 1.")


# ---------------------------------------------------------------------------------------------------- PaMi-VDPO
def augment_image(image, name: str, gen: torch.Generator):
    """One spatial augmentation of a PIL image (same size out)."""
    import numpy as np
    from PIL import ImageFilter, ImageOps

    w, h = image.size
    if name == "flip":
        return ImageOps.mirror(image)
    if name == "crop":
        f = 0.6 + 0.3 * float(torch.rand((), generator=gen))
        cw, ch = max(1, int(w * f)), max(1, int(h * f))
        x0 = int(torch.randint(0, w - cw + 1, (), generator=gen))
        y0 = int(torch.randint(0, h - ch + 1, (), generator=gen))
        return image.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h))
    if name == "blur":
        return image.filter(ImageFilter.GaussianBlur(radius=max(1.0, min(w, h) / 8)))
    arr = np.asarray(image).astype(np.int64)
    if name == "noise":
        noise = torch.randn(arr.shape, generator=gen).numpy() * 40
        return _to_image(arr + noise)
    if name == "colour":
        return _to_image(arr[..., [1, 2, 0]])  # channel rotation: a hue change that keeps the layout
    if name == "mask":
        out = arr.copy()
        bw, bh = max(1, w // 2), max(1, h // 2)
        x0 = int(torch.randint(0, w - bw + 1, (), generator=gen))
        y0 = int(torch.randint(0, h - bh + 1, (), generator=gen))
        out[y0:y0 + bh, x0:x0 + bw] = 128
        return _to_image(out)
    raise ConfigError(f"unknown spatial augmentation {name!r}")


def _to_image(arr):
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.clip(arr, 0, 255).astype("uint8"))


def augment_images(images: list, name: str, gen: torch.Generator) -> list:
    """A spatial augmentation on every image, or a temporal one on the image/frame sequence."""
    if name in SPATIAL:
        return [augment_image(im, name, gen) for im in images]
    n = len(images)
    if name == "reverse":
        return images[::-1]
    if name == "shuffle":
        return [images[i] for i in torch.randperm(n, generator=gen).tolist()]
    if name == "drop_repeat":  # drop one frame, repeat its neighbour
        i = int(torch.randint(1, n, (), generator=gen)) if n > 1 else 0
        return images[:i] + [images[i - 1]] + images[i + 1:] if n > 1 else images
    raise ConfigError(f"unknown augmentation {name!r}")


def pami_candidates(ex: VisionPairExample, num: int, augmentations, gen: torch.Generator,
                    source: str = "<rows>") -> list[list]:
    """K perturbed image lists; temporal augmentations only when the row has several images/frames."""
    pool = [a for a in augmentations if a in SPATIAL or len(ex.images) > 1]
    if not pool:
        raise _pami_row_error(source, ex, "no_augmentation", f"the row has {len(ex.images)} image/frame and "
                              f"augmentations {list(augmentations)} are all temporal (they reorder several frames)",
                              f"Add a spatial augmentation ({', '.join(SPATIAL)}) to vision_pair_params."
                              "augmentations, or give the row several frames.")
    picks = torch.randint(0, len(pool), (num,), generator=gen).tolist()
    return [augment_images(list(ex.images), pool[i], gen) for i in picks]


def _pami_row_error(source: str, ex: VisionPairExample, reason: str, detail: str, fix: str) -> DataError:
    """A PaMi-VDPO row that cannot become a pair: a DataError naming the file, the row and its `images` field."""
    from preflab.data.report import RowProblem, row_error

    return row_error(RowProblem(reason, "images", detail, fix), source, ex.row_id, skippable=False)


def _same_pixels(a: list, b: list) -> bool:
    """Two image lists with the same pixels, image by image (a flip of a symmetric picture, a colour rotation of a
    grey one, a reversal of equal frames)."""
    import numpy as np

    return len(a) == len(b) and all(x.size == y.size and np.array_equal(np.asarray(x), np.asarray(y))
                                    for x, y in zip(a, b))


@torch.no_grad()
def build_pami_pairs(examples, score_answer, num_candidates: int = 4, augmentations=SPATIAL + TEMPORAL,
                     seed: int = 0, tau_sim: float | None = None,
                     source: str = "<rows>") -> tuple[list[VisionPairExample], dict]:
    """SFT examples -> input-side pairs. score_answer(example, images) -> S(y | images, x) (a float, no grad), or,
    with tau_sim, -> (S, E) with E the model's pooled visual features: candidates with cos(E', E) < tau_sim are not
    "close" and are left out of the argmax (a row with no close candidate keeps its most similar one; counted).
    A candidate with the original's pixels is no perturbation (its pair would be (y | v) vs (y | v), a constant
    loss): it is left out (counted); a row with no other candidate, with no image, or with only temporal
    augmentations for one frame is a DataError naming `source`, the row and its images."""
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(seed)
    out, chosen_d, no_close, unchanged = [], [], 0, 0
    for ex in examples:
        if not ex.images:
            raise _pami_row_error(source, ex, "no_image", "the row has no image or video to perturb",
                                  "PaMi-VDPO's rejected side is the answer on perturbed images: give the row its "
                                  "images or videos, or drop it.")
        candidates = pami_candidates(ex, num_candidates, augmentations, gen, source)
        base = score_answer(ex, ex.images)
        scored = [score_answer(ex, c) for c in candidates]
        changed = [k for k, c in enumerate(candidates) if not _same_pixels(c, ex.images)]
        unchanged += len(candidates) - len(changed)
        if not changed:
            raise _pami_row_error(source, ex, "no_perturbation", f"none of its {len(candidates)} perturbed candidates "
                                  f"(augmentations {list(augmentations)}) changes a pixel of its images",
                                  "Raise vision_pair_params.num_candidates or add augmentations that change these "
                                  "images (crop, noise, mask), or drop the row.")
        if tau_sim is None:
            d = [base - s for s in scored]
            keep = changed
        else:
            d = [base[0] - s[0] for s in scored]
            sims = [float(F.cosine_similarity(base[1], s[1], dim=0)) for s in scored]
            keep = [k for k in changed if sims[k] >= tau_sim]
            if not keep:
                no_close += 1
                keep = [max(changed, key=sims.__getitem__)]
        k = max(keep, key=d.__getitem__)
        chosen_d.append(d[k])
        out.append(VisionPairExample(ex.row_id, ex.prompt, ex.chosen, ex.chosen, list(ex.images), candidates[k],
                                     {**ex.extras, "pami_gap": float(d[k])}))
    report = {"builder": "pami_vdpo", "pairs": len(out), "num_candidates": num_candidates, "tau_sim": tau_sim,
              "rows_without_close_candidate": no_close, "unchanged_candidates_left_out": unchanged,
              "mean_selected_gap": sum(chosen_d) / max(1, len(chosen_d))}
    return out, report


# ---------------------------------------------------------------------------------------------------- CAT ADPO
def _text(messages: list[dict]) -> str:
    return " ".join(p["text"] for m in messages for p in m["content"] if p["type"] == "text")


def _names(text: str, objects) -> list[str]:
    low = text.lower()
    return [o for o in objects if re.search(r"\b" + re.escape(str(o).lower()) + r"\b", low)]


def judge_ambiguity(answer: str, objects, vague_terms=VAGUE_TERMS) -> tuple[bool, str]:
    """(ambiguous?, rationale): ambiguous = names no annotated object and uses a vague referent."""
    named = _names(answer, objects)
    if named:
        return False, f"names annotated object(s) {named}"
    vague = [t for t in vague_terms if re.search(r"\b" + re.escape(t) + r"\b", answer.lower())]
    if not vague:
        return False, "names no annotated object but uses no vague referent"
    return True, f"names none of {list(objects)} and uses vague referent(s) {vague}"


def rewrite_specific(answer: str, objects, vague_terms=VAGUE_TERMS) -> str:
    """The answer with its first vague referent replaced by the annotated object(s) ("the red square")."""
    low = answer.lower()
    hits = [(m.start(), m.end()) for t in vague_terms for m in [re.search(r"\b" + re.escape(t) + r"\b", low)] if m]
    start, end = min(hits)
    name = " and ".join(f"the {o}" for o in objects)
    return answer[:start] + name + answer[end:]


def build_cat_pairs(examples, vague_terms=VAGUE_TERMS, source: str = "<rows>") -> tuple[list[VisionPairExample], dict]:
    """Rows with an SFT `response` and annotated `objects` -> ambiguity-aware pairs (see the module docstring).

    `source` names the data file in errors."""
    out, dropped = [], {}
    for ex in examples:
        objects = ex.extras.get("objects")
        if not isinstance(objects, list) or not objects:
            raise DataError(f"{source}: row {ex.row_id}, field 'objects': vision_pairs: cat_adpo needs a non-empty "
                            "list of the annotated objects in every row (rows {images, prompt, response, objects}, "
                            "as examples/vlm/data/cat.jsonl; `preflab eval --task vlm` builds its pairs the way the "
                            "run did). For rows that already hold chosen/rejected pairs use vision_pairs: given.")
        answer = _text(ex.chosen)
        ambiguous, why = judge_ambiguity(answer, objects, vague_terms)
        if not ambiguous:
            dropped["not_ambiguous"] = dropped.get("not_ambiguous", 0) + 1
            continue
        specific = ex.extras.get("rewrite") or rewrite_specific(answer, objects, vague_terms)
        if not _names(specific, objects):
            dropped["rewrite_names_no_object"] = dropped.get("rewrite_names_no_object", 0) + 1
            continue
        chosen = [{"role": "assistant", "content": [{"type": "text", "text": specific}]}]
        extras = {k: v for k, v in ex.extras.items() if k not in ("objects", "rewrite")}
        out.append(VisionPairExample(ex.row_id, ex.prompt, chosen, ex.chosen, list(ex.images), None,
                                     {**extras, "adpo_rationale": why}))
    return out, {"builder": "cat_adpo", "pairs": len(out), "dropped": dropped}
