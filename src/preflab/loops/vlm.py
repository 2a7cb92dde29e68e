"""Preference training of image/video-text models: the offline Trainer with a vision scorer and data path.

    summary = VisionTrainer(load_config("examples/vlm/dpo.yaml")).train()     # preflab train with task: vlm

Nothing here is a new loop: VisionTrainer is preflab.loops.offline.Trainer (TrainingRun + step.py) with
  - the scorer preflab.scoring.vlm.VisionLogProbScorer (pixels through the model's backbone, LM head at response
    positions only, in chunks), used for the policy and the reference alike;
  - the batch kind VisionPairKind (TokenizedVisionPair -> VisionLayout -> PairBatch), so every pairwise objective
    (sigmoid DPO, IPO, RRPO, ...) trains unchanged;
  - data from preflab.data.vision (TRL's vision DPO rows) through a pair builder (cfg.vision_pairs: given |
    pami_vdpo | cat_adpo; preflab.data.vision_pairs);
  - models from preflab.models.vlm (AutoModelForImageTextToText + AutoProcessor, frozen vision tower, LoRA on the
    language model), optionally with CAT's clue aggregator (preflab.models.clue_aggregator).
RRPO's per-token phrase ids are built on the tokenizer path (preflab.data.phrases) whenever the objective requires
`chosen_phrase_ids`, and reach it as [B, L] extras aligned with the response tokens.
"""
from __future__ import annotations

import dataclasses
from functools import cached_property

import torch

from preflab.errors import ConfigError
from preflab.loops.kinds import PairKind
from preflab.loops.offline import Trainer
from preflab.models.clue_aggregator import CLUE_AGGREGATOR_FILE  # a LoRA run's trained clue aggregator (CAT)
from preflab.models.dropout import original_dropout_config
from preflab.objectives.base import PairBatch
from preflab.scoring.vlm import VisionLogProbScorer, collate_vision_pairs


class VisionPairKind(PairKind):
    name = "vision_pairs"

    @staticmethod
    def collate(items, pad_id: int, layout: str = "padded"):
        return collate_vision_pairs(items, pad_id, layout)

    @staticmethod
    def count_tokens(items) -> int:
        """(prompt + chosen) + (prompt' + rejected) per pair, image tokens included."""
        return sum(len(p.side(False)[0]) + len(p.side(True)[0]) + len(p.chosen_ids) + len(p.rejected_ids)
                   for p in items)


def answer_scorer(policy, processor, max_length, chunk_tokens=None, with_features: bool = False,
                  max_completion_length: int | None = None):
    """score(example, images) -> S(y | images, x): the summed log-prob of the example's chosen answer, no grad.
    with_features: -> (S, E) where E [D] is the mean of the LM-input embeddings at the image tokens (the model's own
    pooled visual features, PaMi-VDPO's "close" test)."""
    from preflab.data.vision import tokenize_vision_pair
    from preflab.scoring.lm import backbone_and_head

    scorer = VisionLogProbScorer(policy, chunk_tokens)
    pad = processor.tokenizer.pad_token_id
    image_token = image_token_id(policy, processor)

    @torch.no_grad()
    def score(ex, images):
        item = tokenize_vision_pair(dataclasses.replace(ex, images=list(images), rejected_images=list(images)),
                                    processor, max_length, max_completion_length=max_completion_length)
        was_training = policy.training
        policy.eval()
        layout = collate_vision_pairs([item], pad)
        value = float(scorer(layout).token_logps[0].sum())
        if with_features:
            out = backbone_and_head(policy)[0](**layout.model_inputs(policy), output_hidden_states=True,
                                               use_cache=False)
            at = layout.input_ids[0] == image_token
            feature = out.hidden_states[0][0][at].float().mean(0)
        policy.train(was_training)
        return (value, feature) if with_features else value

    return score


def image_token_id(model, processor) -> int:
    from preflab.models.attention import unwrap

    config = unwrap(model).config
    for name in ("image_token_id", "image_token_index"):
        if isinstance(getattr(config, name, None), int):
            return getattr(config, name)
    return processor.image_token_id


def image_free_rows(examples) -> int:
    """How many VisionPairExamples hold no image or video on either side."""
    return sum(1 for e in examples if not e.images and not e.rejected_images)


def image_free_note(bare: int, rows: int, split: str) -> str | None:
    """The note for `bare` of a split's `rows` that hold no image or video: the image-text model trains on (or is
    scored on) their text alone, as TRL's DPOTrainer does with a text row. Before, a text pairs file given to task:
    vlm trained on text with no word (its data line even counted the rows as form vision_standard), where a text
    task refuses rows with images."""
    if not bare:
        return None
    counted = (f"none of the {rows} {split} rows holds an image or video" if bare == rows else
               f"{bare} of the {rows} {split} rows hold no image or video")
    return (f"preflab: note: data: {counted}: the image-text model reads their text alone. A text pairs file? "
            "Vision rows carry `images` (or `image`) and one {'type': 'image'} part per image in the prompt "
            "(docs/vision.md).")


def prepare_vision_data(cfg, processor, policy, objective, reader=None, rows_read: dict | None = None,
                        evaluated: bool = False):
    """(train TokenizedVisionPairs, eval ones, data report): rows -> pair builder -> processor tokenization.
    reader: a RowReader already opened on cfg.dataset_name's split (preflab eval --task vlm's), read instead of
    opening the data again. rows_read: a dict to receive the VisionPairExamples as read, before the pair builder
    ({"train": ..., "eval": ...}; preflab eval --task vlm compares them with the run's training rows). evaluated:
    the rows are `preflab eval --task vlm`'s --data, so the data line counts pairs to evaluate, not train / eval
    pairs (it said "8 train pairs, 0 eval pairs" of the pairs it then evaluated)."""
    from preflab.data import vision_pairs as builders
    from preflab.data.eval_set import train_and_eval
    from preflab.data.report import refuse_empty
    from preflab.data.vision import read_vision_pairs, tokenize_vision_pairs

    if not cfg.dataset_name:
        raise ConfigError("dataset_name is empty; give a .jsonl/.json/.parquet file, a directory or a hub name.")
    builder, params = cfg.vision_pairs, dict(cfg.vision_pair_params)
    read = dict(on_bad_row=cfg.on_bad_row, max_frames=cfg.max_frames, responses_only=builder != "given")
    from preflab.data.configured_source import training_source

    rows, row_report = read_vision_pairs(training_source(cfg) if reader is None else reader, split=cfg.dataset_split,
                                         **read)
    # nothing read: named by the option the user gave (preflab eval's --data, else dataset_name), its split and file(s)
    refuse_empty(row_report, "--data" if evaluated else "dataset_name", cfg.dataset_name)
    rows, eval_rows, eval_report = train_and_eval(cfg, rows, lambda name, split: read_vision_pairs(name, split=split,
                                                                                                   **read))
    sources = {"train": row_report.source, "eval": (eval_report or row_report).source}
    if rows_read is not None:
        rows_read.update(train=rows, eval=eval_rows)
    report = {"train_rows": row_report.to_dict(), "vision_pairs": builder}
    unused = getattr(row_report, "rejected_unused", 0)
    if unused:  # a pairs file given to a builder of one-answer rows: its rejected answers are not trained on
        report["rejected_answers_unused"] = unused
        print(f"preflab: note: data: {row_report.source}: vision_pairs: {builder} reads one answer per row (`response`, "
              f"else `chosen`) and builds the rejected side itself; the `rejected` answers of {unused} of the "
              f"{row_report.kept} rows are not used. To train on the given pairs, set vision_pairs: given.")
    for split, examples in (("train", rows), ("eval", eval_rows)):
        bare = image_free_rows(examples)
        note = image_free_note(bare, len(examples), "evaluated" if evaluated else split)
        if note:
            print(note)

    def build(examples, split):
        if builder == "pami_vdpo":
            tau = params.get("tau_sim")
            score = answer_scorer(policy, processor, cfg.max_length, cfg.chunk_tokens, with_features=tau is not None,
                                  max_completion_length=cfg.max_completion_length)
            examples, info = builders.build_pami_pairs(
                examples, score, int(params.get("num_candidates", 4)),
                tuple(params.get("augmentations", builders.SPATIAL + builders.TEMPORAL)),
                int(params.get("seed", cfg.seed)), tau_sim=None if tau is None else float(tau), source=sources[split])
        elif builder == "cat_adpo":
            examples, info = builders.build_cat_pairs(examples, tuple(params.get("vague_terms", builders.VAGUE_TERMS)),
                                                      source=sources[split])
        else:
            info = None
        if info is not None:
            report[f"{split}_builder"] = info
        return examples

    phrase_ids = "chosen_phrase_ids" in getattr(objective, "required_extras", ())
    out = []
    for split, examples in (("train", rows), ("eval", eval_rows)):
        if split == "eval" and not examples:
            out.append([])
            continue
        examples = build(examples, split)
        pairs, tok_report, dropped = tokenize_vision_pairs(examples, processor, cfg.max_length, phrase_ids,
                                                           cfg.on_bad_row, row_report.source, cfg.max_completion_length)
        report[f"{split}_tokenize"] = {**tok_report.to_dict(), "skipped": dict(dropped.skipped)}
        out.append(pairs)
    cut = sum(report[f"{split}_tokenize"].get("truncated_responses", 0) for split in ("train", "eval")
              if f"{split}_tokenize" in report)
    counts = (f"{len(out[0])} pairs to evaluate" if evaluated else
              f"{len(out[0])} train pairs, {len(out[1])} eval pairs")
    if builder != "given":  # the rows hold one answer each (the data line's kind says single-response)
        counts = f"vision_pairs: {builder} built {counts}"
    print(f"preflab{' eval' if evaluated else ''}: vision data: {row_report.summary()}; {counts}"
          + (f"; {cut} responses truncated (max_length={cfg.max_length}, max_completion_length="
             f"{cfg.max_completion_length})" if cut else ""))
    from preflab.data.report import training_skipped

    report["skipped"] = training_skipped(report)  # read + tokenized, as every task's data report
    report["duplicate_train_pairs"] = repeated = repeated_vision_pairs(out[0])
    if repeated:  # as the text rows' overlap note
        from preflab.data.overlap import repeats_note

        print(f"preflab: note: data: {repeats_note(repeated, 'pair(s)', 'tokens and image pixels')}")
    return out[0], out[1], report


def repeated_vision_pairs(pairs) -> int:
    """How many tokenized vision pairs repeat an earlier one: the same token ids and processor tensors by content
    (vision_pairs_fingerprint of the pair alone), so a row copied with its images counts, another image does not."""
    from preflab.data.overlap import count_repeats
    from preflab.data.vision import vision_pairs_fingerprint

    return count_repeats(vision_pairs_fingerprint([pair]) for pair in pairs)


def vision_layout_choice(layout: str, *models, splits: dict | None = None) -> str:
    """prefix_shared when asked for, every model allows it (1-D positions, custom 4-D masks) and some pair of
    `splits` ({"train": TokenizedVisionPairs, "eval": ...}) can share its prompt, else padded.

    The fallback is right, not a fault: Qwen2-VL / Qwen2.5-VL compute 3-D rotary positions from the image grid
    inside transformers (get_rope_index), which a shared prompt's rejected half would restart; a pair whose
    rejected side has its own images (PaMi-VDPO's perturbed images, a `rejected_images` column) has two prompts.
    As `layout`'s default is prefix_shared, every run of such a model or data takes it, so it is one preflab line
    per run (the trainer, eval included, calls this once), not a Python UserWarning with a source line. Before,
    the data's fallback (made per batch by collate_vision_pairs) said nothing, and summary.json's `layout` said
    prefix_shared for a pami_vdpo run scored wholly padded."""
    from preflab.models.vlm import shared_prompt_support
    from preflab.scoring.vlm import unshareable_pairs

    if layout not in ("prefix_shared", "prefix_packed"):
        return "padded"
    for model in models:
        if model is None:
            continue
        ok, why = shared_prompt_support(model)
        if not ok:
            print(f"preflab: layout: {layout} needs 1-D positions, but {why}; scoring with the padded layout "
                  "(the prompt computed once per side, same log-probs).")
            return "padded"
    pairs = [p for split in (splits or {}).values() for p in (split or ())]
    unshared = unshareable_pairs(pairs)
    if unshared:
        counted = f"all {unshared} pairs" if unshared == len(pairs) else f"{unshared} of the {len(pairs)} pairs"
        why = (f"{counted} score the rejected answer on other images than the chosen (input-side negatives: "
               "vision_pairs: pami_vdpo's perturbed images, or a `rejected_images` column)"
               if all(p.rejected_prompt_ids is not None for p in pairs if unshareable_pairs([p])) else
               f"{counted} have input-side negatives or per-token processor inputs")
        if unshared == len(pairs):
            print(f"preflab: layout: {layout} shares one prompt per pair, but {why}; scoring with the padded "
                  "layout (the prompt computed once per side, same log-probs).")
            return "padded"
        print(f"preflab: layout: {layout} shares one prompt per pair, but {why}; a batch holding one of them is "
              "scored with the padded layout (same log-probs), the others with prefix_shared.")
    return "prefix_shared"


class VisionTrainer(Trainer):
    """Trains an image-text-to-text policy on vision preference pairs (task: vlm). Models, processor and data may
    be passed in (tests, the demo); reader: a RowReader already opened on the training data (prepare_vision_data)."""

    scorer_class = VisionLogProbScorer

    @cached_property
    def layout(self) -> str:
        """vision_layout_choice in place of the text models' check (Trainer.layout): read as the run is built, or,
        for a FlexAttention policy on the CPU (train() refuses it), when evaluate() first needs it."""
        return vision_layout_choice(self.cfg.layout, self.policy, self.ref,
                                    splits={"train": self.train_data, "eval": self.eval_data})

    def __init__(self, cfg, policy=None, ref=None, processor=None, train_data=None, eval_data=None, reader=None):
        from preflab.data.vision_pairs import check_builder

        check_builder(cfg.vision_pairs, cfg.vision_pair_params)
        if cfg.max_frames < 1:
            raise ConfigError(f"max_frames must be >= 1, got {cfg.max_frames}.")
        if cfg.max_prompt_length is not None:
            raise ConfigError("task: vlm never cuts prompts (their image tokens must stay whole); unset "
                              "max_prompt_length. max_length cuts responses, and a prompt that fills it is a bad row.")
        if cfg.generate_during_eval:  # Trainer._write_eval_samples generates from prompt token ids alone
            raise ConfigError("generate_during_eval: preflab's eval samples are generated from the prompts' token ids "
                              "without their images or videos, so an image-text model would answer questions about "
                              "pictures it never sees; set generate_during_eval: false for task: vlm (sample a "
                              "trained VLM with its processor: AutoModelForImageTextToText.generate).")
        objective = cfg.objective()
        if objective.batch_type is not PairBatch:
            raise ConfigError(f"task: vlm trains pairwise objectives (a chosen and a rejected answer per prompt); "
                              f"loss_type {cfg.loss_type!r} consumes {objective.batch_type.__name__} rows. Use a "
                              "pairwise loss_type (sigmoid, ipo, robust, rrpo, ...: `preflab objectives` lists them).")
        if policy is None:
            from preflab.models.vlm import load_vlm

            policy, ref, processor = load_vlm(cfg, processor)
        if processor is None:
            raise ConfigError("VisionTrainer needs the model's processor when a policy is passed in.")
        self.processor = processor
        if cfg.clue_aggregator:
            from preflab.models.clue_aggregator import attach_clue_aggregator

            # zero-initialised: the reference (without it) is unchanged; a policy reloaded from a CAT run keeps its
            # trained one, which trains on (also when LoRA froze every other base weight)
            attach_clue_aggregator(policy, processor).requires_grad_(True)
        report = {}
        if train_data is None:
            train_data, eval_data, report = prepare_vision_data(cfg, processor, policy, objective, reader)
        super().__init__(cfg, policy=policy, ref=ref, tokenizer=processor.tokenizer, train_data=train_data,
                         eval_data=eval_data)
        self.data_report = report
        from preflab.models.clue_aggregator import clue_aggregator_of

        aggregator = clue_aggregator_of(policy)
        if self.ref_is_base and aggregator is not None:
            # the reference is the policy with its adapters off; the aggregator trains with the adapters, so the
            # reference uses a frozen copy of the weights training starts from (before a resume loads any)
            aggregator.keep_initial()

    def base_model(self):
        """The LoRA policy as training started from: adapters off and CAT's clue aggregator at its initial weights."""
        from contextlib import ExitStack

        from preflab.models.clue_aggregator import clue_aggregator_of

        stack = ExitStack()
        stack.enter_context(self.policy.disable_adapter())
        aggregator = clue_aggregator_of(self.policy)
        if aggregator is not None:
            stack.enter_context(aggregator.as_initial())
        return stack

    @staticmethod
    def ref_inputs_fingerprint(examples) -> str:
        """The reference cache's key of vision pairs: token ids and the processor's pixel tensors (images are not in
        the token ids)."""
        from preflab.data.vision import vision_pairs_fingerprint

        return vision_pairs_fingerprint(examples)

    def collate(self, items):
        """The layout, with CAT's CluePlan built here on the host when the policy has a clue aggregator (its
        rewrite then gathers by index: no host sync per row)."""
        from preflab.models.clue_aggregator import clue_aggregator_of, clue_plan, prompt_lengths
        from preflab.scoring.vlm import VisionLayout

        layout = super().collate(items)
        aggregator = clue_aggregator_of(self.policy)
        if aggregator is not None and isinstance(layout, VisionLayout) and layout.input_ids.device.type == "cpu":
            mask = layout.attention_mask if layout.attention_mask.dim() == 2 else None
            layout.clue_plan = clue_plan(layout.input_ids, mask, prompt_lengths(layout.pred_index,
                                                                                *layout.input_ids.shape),
                                         aggregator.image_token_id)
        return layout

    def batch_kind(self, objective):
        return VisionPairKind

    def write_model(self) -> None:
        """Weights as safetensors (LoRA: the adapter, and CAT's clue aggregator, which is no adapter weight, in
        clue_aggregator.safetensors) with the processor (tokenizer, image processor, template)."""
        model = self.accelerator.unwrap_model(self.policy)
        gathered = self.final_state_dict  # FSDP2 / ZeRO-3: the policy's own tensors are shards (driver gathers them)
        with original_dropout_config(model):  # config.json keeps the rates disable_dropout zeroed for training
            model.save_pretrained(self.out, safe_serialization=True, **({"state_dict": gathered} if gathered else {}))
        self.processor.save_pretrained(self.out)
        from preflab.models.clue_aggregator import clue_aggregator_of

        aggregator = clue_aggregator_of(model)
        if aggregator is not None and hasattr(model, "peft_config"):  # peft saves the adapters only: it was lost
            from safetensors.torch import save_file

            state = aggregator.state_dict()
            if gathered:
                prefix = next(f"{name}." if name else "" for name, sub in model.named_modules() if sub is aggregator)
                state = {k[len(prefix):]: v for k, v in gathered.items() if k.startswith(prefix)}
            save_file({k: v.detach().contiguous().cpu() for k, v in state.items()},
                      str(self.out / CLUE_AGGREGATOR_FILE))
