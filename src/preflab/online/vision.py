"""GRPO on an image-text model (online_task: vision_dataset), e.g. Vision-R1: the online run (preflab.online.run,
on loops/driver.py and step.py) with image prompts. No new loop: VisionOnlineRun overrides OnlineRun's hooks for
generation (the VLM's generate() on processor inputs), sequence layouts (each completion scored with its prompt's
image tensors) and scoring (preflab.scoring.vlm.VisionLogProbScorer, for the policy and the reference).

    preflab train examples/vlm/vision_r1.yaml       # task: online, online_task: vision_dataset, trainer: grpo

Rows (preflab.data.vision): `images` (paths relative to the data file, or PIL images from Python) and a `prompt`
(text, or messages with {"type": "image"} parts). Every other column (Vision-R1's `solution`, `num_instances`) is
handed to the reward functions, one entry per completion, as TRL does; completions reach them as assistant messages.
The prompt's images reach them too, as TRL 1.16's GRPOTrainer passes its dataset's `images` column: keyword `images`,
one list of PIL images per completion (the RGB images the model sees), given only to reward functions with an `images`
parameter or **kwargs (never to reward models); the judge cache tells them apart by their pixels' digest.

Vision-R1 (Zhan et al., 2025, arXiv:2503.18013; methods §18): R = R_fmt + R_P + R_R (reward_funcs
verifier:vision_r1_format / _precision / _recall, preflab.verifiers.vision_r1), trainer grpo (loss_type grpo) with
beta = 0.04 (the released recipe), G = num_generations completions per image. Sampling uses the full softmax at
`temperature` (top-k off), one generate() per chunk of generation_batch_size prompts seeded by (round seed + chunk),
except that the image/video placeholder tokens are never sampled (`bad_words_ids`: a completion holding one would be
read as an image slot). Deviation: the sampling distribution is pi_old with those few tokens removed; the importance
ratios and the KL are computed on the full softmax (for a trained model their probability is negligible).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from preflab.errors import ConfigError
from preflab.models.attention import unwrap
from preflab.online.run import OnlineRun
from preflab.online.tasks import Task
from preflab.scoring.vlm import VisionLogProbScorer, vision_layout


@dataclass
class VisionPromptRow:
    """One image prompt: messages, templated text, token ids (image tokens expanded), processor tensors, columns."""

    row_id: int
    prompt: list
    prompt_text: str
    prompt_ids: list[int]
    images: list
    vision: dict
    token_inputs: dict
    columns: dict = field(default_factory=dict)
    image_digest: str = ""  # SHA-256 of the images' pixels (image_digest): the judge cache's key for them
    column_images: list | None = None  # the `images` column's images (`images` adds video frames): reward kwarg


def vision_prompt_rows(source, processor, split: str = "train", on_bad_row: str = "error",
                       max_prompt_length: int | None = None, max_frames: int = 8,
                       report_to: dict | None = None) -> list[VisionPromptRow]:
    """Prompt rows of a file / dataset / list of dicts with `images` and `prompt`; a bad row -> DataError naming
    the file, row and field (or skipped with on_bad_row: skip). A prompt over max_prompt_length tokens (image
    tokens included) is a bad row: cutting it would cut image slots. report_to["prompt_rows"] gets the rows read,
    kept and skipped (summary.json "data")."""
    from preflab.data.report import BadRowPolicy, DataReport, RowProblem, refuse_empty
    from preflab.data.sources import RowReader
    from preflab.data.vision import _encode_prompt, load_images, row_dir, vision_prompt

    reader = RowReader(source, split=split)
    policy = BadRowPolicy(on_bad_row, DataReport(source=reader.name, kind="prompt"))

    def encoded(raw):
        prompt, images = vision_prompt(raw.data, row_dir(raw), max_frames)
        text = processor.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        ids, vision, token_inputs = _encode_prompt(processor, text, images, "images")
        if max_prompt_length is not None and len(ids) > max_prompt_length:
            raise RowProblem("prompt_too_long", "prompt", f"the prompt is {len(ids)} tokens with its image "
                             f"tokens, over max_prompt_length = {max_prompt_length}",
                             "Raise max_prompt_length, use smaller images, or drop the row (on_bad_row: skip).")
        # the `images` column alone (the reward functions' `images`, as TRL's): images are video frames with videos
        column = load_images(raw.data.get("images"), "images", row_dir(raw)) if raw.data.get("videos") else images
        return prompt, text, ids, images, vision, token_inputs, column

    from preflab.online.tasks import column_gaps

    rows, source_ids = [], []
    for raw, (prompt, text, ids, images, vision, token_inputs, column) in policy.accepted(reader, encoded):
        columns = {k: v for k, v in raw.data.items() if k not in ("prompt", "images", "videos")}
        rows.append(VisionPromptRow(len(rows), prompt, text, ids, images, vision, token_inputs, columns,
                                    image_digest(images), column))
        source_ids.append(raw.row_id)
    policy.report.examples = len(rows)
    policy.report.column_gaps = column_gaps([(i, r.columns) for i, r in zip(source_ids, rows)])
    if report_to is not None:
        report_to["prompt_rows"] = policy.report.to_dict()
    refuse_empty(policy.report)  # nothing read at all (blank lines counted), not a rows' problem
    if not rows:
        raise ConfigError(f"{reader.name}: online_task vision_dataset needs at least one row with `images` and "
                          "`prompt`.")
    return rows


def image_digest(images) -> str:
    """SHA-256 over the images in order (mode, size and pixel bytes of each): two prompts with the same text and
    other images get different judge-cache keys (preflab.loops.judge), the same pixels from any file the same."""
    import hashlib

    digest = hashlib.sha256()
    for im in images:
        digest.update(f"{im.mode} {im.size[0]}x{im.size[1]};".encode())
        digest.update(im.tobytes())
    return digest.hexdigest()


def placeholder_ids(model) -> list[int]:
    """Token ids that stand for image/video features (a completion holding one could not be scored)."""
    config = unwrap(model).config
    ids = {getattr(config, name, None) for name in ("image_token_id", "video_token_id", "image_token_index",
                                                      "video_token_index")}
    return sorted(i for i in ids if isinstance(i, int))


# model types whose shared prefill is checked against the repeated-prompt path (tests/vlm/test_vision_kv.py)
SHARED_PREFILL_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava", "idefics3")


class VisionGenerator:
    """G sampled completions per image prompt: the VLM's generate() on the processor's left-padded batch, chunk c
    of generation_batch_size prompts after torch.manual_seed(seed + c); placeholder tokens banned.

    Each distinct prompt is processed and prefilled once (its images encoded once) and its KV cache shared by its G
    completions (preflab.generate_groups.prefilled_generate): the same draws as generating on the G copies of each
    prompt (the path before), up to float rounding. Model types not checked for that (SHARED_PREFILL_MODEL_TYPES)
    and caches that cannot be shared take that path, said once."""

    def __init__(self, model, processor, max_new_tokens: int, temperature: float, top_p: float, batch_size: int,
                 device):
        self.model, self.processor, self.device = model, processor, device
        self.max_new_tokens, self.temperature, self.top_p, self.batch_size = max_new_tokens, temperature, top_p, \
            batch_size
        self.banned = [[i] for i in placeholder_ids(model)]

    def _encode(self, texts: list[str], images: list) -> dict:
        tok = self.processor.tokenizer
        side = tok.padding_side
        tok.padding_side = "left"
        try:
            enc = self.processor(text=texts, images=images or None, return_tensors="pt", padding=True)
        finally:
            tok.padding_side = side
        return {key: v.to(self.device) if isinstance(v, torch.Tensor) else v for key, v in enc.items()}

    def _why_not_shared(self, model, k: int) -> str | None:
        model_type = getattr(model.config, "model_type", None)
        if k > 1 and model_type not in SHARED_PREFILL_MODEL_TYPES:
            return f"image-text model type {model_type!r} is not checked for a shared prompt prefill (checked: " \
                   f"{', '.join(SHARED_PREFILL_MODEL_TYPES)})"
        return None

    @torch.no_grad()
    def _chunk(self, rows: list[VisionPromptRow], k: int, seed: int) -> list[list[int]]:
        from preflab.generate import cut_after_eos
        from preflab.generate_groups import _say_once, prefilled_generate
        from preflab.loops.rollout import full_distribution, pad_id_of

        tok = self.processor.tokenizer
        model = unwrap(self.model)
        # min_p / repetition_penalty explicitly off: a model's generation_config.json must not add its own (top_k:
        # full_distribution)
        settings = dict(do_sample=True, temperature=self.temperature, top_p=self.top_p, min_p=None,
                        repetition_penalty=1.0, max_new_tokens=self.max_new_tokens, pad_token_id=pad_id_of(tok),
                        eos_token_id=tok.eos_token_id, bad_words_ids=self.banned or None)
        was_training = model.training
        model.eval()
        try:
            with full_distribution(model):
                out = None
                if k > 1:
                    if (why := self._why_not_shared(model, k)) is not None:
                        _say_once(why)
                    else:
                        enc = self._encode([row.prompt_text for row in rows], [im for row in rows for im in row.images])
                        ids, attn = enc.pop("input_ids"), enc.pop("attention_mask")
                        out = prefilled_generate(model, ids, attn, k, seed=seed, inputs=enc, **settings)
                        width = ids.shape[1]
                if out is None:  # k copies of each prompt (k = 1, or the prefill cannot be shared)
                    enc = self._encode([row.prompt_text for row in rows for _ in range(k)],
                                       [im for row in rows for _ in range(k) for im in row.images])
                    torch.manual_seed(seed)
                    out = model.generate(**enc, **settings)
                    width = enc["input_ids"].shape[1]
        finally:
            model.train(was_training)
        return cut_after_eos(out[:, width:], tok.eos_token_id)

    def generate(self, rows: list[VisionPromptRow], num_generations: int, seed: int) -> list[list[int]]:
        return [ids for c, start in enumerate(range(0, len(rows), self.batch_size))
                for ids in self._chunk(rows[start:start + self.batch_size], num_generations, seed + c)]


def load_vision_task(cfg, processor) -> Task:
    from preflab.online.tasks import _as_list, resolve_judge

    if not cfg.dataset_name:
        raise ConfigError("online_task: vision_dataset needs dataset_name (rows with `images` and `prompt`).")
    if not cfg.reward_funcs:
        raise ConfigError("online_task: vision_dataset needs reward_funcs (e.g. verifier:vision_r1_format, "
                          "verifier:vision_r1_precision, verifier:vision_r1_recall).")
    report: dict = {}
    from preflab.data.configured_source import training_source

    rows = vision_prompt_rows(training_source(cfg), processor, cfg.dataset_split, cfg.on_bad_row,
                              cfg.max_prompt_length, report_to=report)
    from preflab.runlog import is_main_process

    if is_main_process():  # skipped prompt rows are said, as for text prompts (online.tasks.load_task)
        from preflab.data.report import DataReport

        rows_report = DataReport(**report["prompt_rows"])
        print(f"preflab: data: {rows_report.summary()}")
        if rows_report.column_gaps:
            from preflab.online.tasks import column_gaps_note

            print(f"preflab: note: data: {column_gaps_note(rows_report.column_gaps, len(rows), rows_report.source)}")
    task = Task([r.prompt for r in rows], [resolve_judge(j, cfg.trust_remote_code) for j in _as_list(cfg.reward_funcs)],
                data_report=report)
    task.rows = rows
    return task


class VisionOnlineRun(OnlineRun):
    """OnlineRun with image prompts (group recipes; preflab.online_options checks the config)."""

    scorer_class = VisionLogProbScorer
    prompt_sharing = False  # image prompts: one vision_layout row per completion

    def __init__(self, cfg, policy=None, ref=None, processor=None, task=None):
        if processor is None:
            from preflab.models.vlm import load_vlm_processor

            processor = load_vlm_processor(cfg)
        if policy is None:
            from preflab.models.vlm import load_vlm

            policy, ref, _ = load_vlm(cfg, processor)
        self.processor = processor
        task = task or load_vision_task(cfg, processor)
        if not isinstance(getattr(task, "rows", None), list) or not all(isinstance(r, VisionPromptRow)
                                                                       for r in task.rows):
            raise ConfigError("VisionOnlineRun needs a task whose `rows` are VisionPromptRows (vision_prompt_rows).")
        self.by_id = {r.row_id: r for r in task.rows}
        super().__init__(cfg, policy=policy, ref=ref, tokenizer=processor.tokenizer, task=task)
        if self.accelerator.num_processes > 1:
            raise ConfigError("online_task: vision_dataset generates on one process; run it without a launcher.")
        self.generator = VisionGenerator(policy, processor, cfg.max_completion_length, cfg.temperature, cfg.top_p,
                                         cfg.generation_batch_size, self.accelerator.device)

    def _generate(self, rows, k: int, seed: int) -> list[list[int]]:
        return self.generator.generate(rows, k, seed)

    def _judge_cache_context(self, rows, K: int, n: int):
        """The judge cache keys a completion by its prompt's images too (their pixels' digest): the prompt messages
        hold only {"type": "image"} parts, so two prompts with the same text and other images would share a reward."""
        return [rows[i // K].image_digest or image_digest(rows[i // K].images) for i in range(n)]

    def _judge_images(self, rows, K: int, n: int):
        """Each completion's prompt images, TRL's reward kwarg `images` (a list of PIL images per completion)."""
        return [rows[i // K].column_images if rows[i // K].column_images is not None else rows[i // K].images
                for i in range(n)]

    def _layout(self, sequences, row_ids):
        return vision_layout([(p, c, self.by_id[r].vision, self.by_id[r].token_inputs)
                              for (p, c), r in zip(sequences, row_ids)], self.pad_id)

    def _group_layout(self, examples):
        return self._layout([(e.prompt_ids, c) for e in examples for c in e.completions],
                            [e.row_id for e in examples for _ in e.completions])

    def _reference_source(self):
        if self.cfg.refresh_reference_every == 1:
            return self._policy_scores
        if self.ref is not None:
            return VisionLogProbScorer(self.ref, self.cfg.chunk_tokens, self.score_temperature)

        def base_model(layout):  # LoRA: the reference is the base model
            with self.policy.disable_adapter():
                return VisionLogProbScorer(self.policy, self.cfg.chunk_tokens, self.score_temperature)(layout)

        return base_model

    def _empty_layout(self):
        row = next(iter(self.by_id.values()))
        return self._layout([(row.prompt_ids, [self.pad_id])] * 2, [row.row_id] * 2)

    def write_model(self) -> None:
        super().write_model()
        if self.main:
            self.processor.save_pretrained(self.out)

