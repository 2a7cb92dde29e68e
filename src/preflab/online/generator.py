"""Sampling completions for online runs behind one small interface.

    gen = make_generator(cfg, policy, tokenizer)
    ids = gen.generate(prompt_ids, num_generations=4, seed=1234)   # [len(prompt_ids) * 4] token-id lists

Completions are group-major (completion i belongs to prompt i // K), cut after the first eos (eos kept), drawn at
`temperature` with `top_p`, `top_k` (0: off), `min_p` (None: off) and `repetition_penalty` (1: none), TRL
GRPOConfig's options, each passed to `model.generate` (or vLLM's SamplingParams) explicitly, so a model's own
generation_config.json values of them (Qwen2.5-Instruct's repetition_penalty 1.05, top_k 20) do not apply.
Determinism: the prompts are cut into chunks of generation_batch_size prompts and chunk c is sampled after
torch.manual_seed(seed + c), so the samples depend on (seed, prompts, weights, generation_batch_size) only, not on
which process draws the chunk: with several processes, rank r draws the chunks c = r, r + world, ... and all ranks
gather every chunk (the same completions as one process). Another generation_batch_size cuts other chunks and so
draws other completions (a resume treats it as a change of what the run computes).

TransformersGenerator (default): `model.generate` with its KV cache on left-padded prompt batches; each distinct
prompt is prefilled once and its cache shared by its K completions (generate_groups.py; the same draws as
prefilling the K copies, up to float rounding; caches that cannot be shared fall back to that, said once).
VLLMGenerator: used with generation_backend: vllm when the optional `vllm` package imports (pip install
preflab[vllm]); it loads the policy's saved weights into a vLLM engine each round (weights_dir) and is not
bit-identical to the transformers path. Never imported unless asked for.
"""
from __future__ import annotations

from typing import Protocol

from preflab.errors import ConfigError
from preflab.generate_groups import generate_groups
from preflab.models.dropout import original_dropout_config
from preflab.log_lines import bar_class
from preflab.quiet import progress_bars_off


class Generator(Protocol):
    def generate(self, prompt_ids: list[list[int]], num_generations: int, seed: int) -> list[list[int]]: ...


class TransformersGenerator:
    def __init__(self, model, eos_id: int, pad_id: int, max_new_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0, batch_size: int = 64, accelerator=None, top_k: int = 0,
                 min_p: float | None = None, repetition_penalty: float = 1.0):
        self.model, self.eos_id, self.pad_id = model, eos_id, pad_id
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.batch_size, self.accelerator = batch_size, accelerator
        # explicit, also at their defaults: the model's generation_config must not add its own
        self.sampling = dict(top_k=top_k, min_p=min_p, repetition_penalty=repetition_penalty)

    def _chunk(self, prompts: list[list[int]], k: int, seed: int) -> list[list[int]]:
        from preflab.loops.rollout import full_distribution

        with full_distribution(self.model):
            return generate_groups(self.model, prompts, k, eos_id=self.eos_id, pad_id=self.pad_id,
                                   max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                   top_p=self.top_p, seed=seed, **self.sampling)

    def generate(self, prompt_ids: list[list[int]], num_generations: int, seed: int) -> list[list[int]]:
        acc = self.accelerator
        world, rank = (acc.num_processes, acc.process_index) if acc is not None else (1, 0)
        chunks = [prompt_ids[i:i + self.batch_size] for i in range(0, len(prompt_ids), self.batch_size)]
        mine = {c: self._chunk(chunk, num_generations, seed + c) for c, chunk in enumerate(chunks) if c % world == rank}
        if world > 1:
            from accelerate.utils import gather_object

            gathered = gather_object([mine])
            mine = {c: ids for part in gathered for c, ids in part.items()}
        return [ids for c in range(len(chunks)) for ids in mine[c]]


class VLLMGenerator:  # pragma: no cover - needs the optional vllm package and a GPU
    def __init__(self, model, tokenizer, weights_dir: str, max_new_tokens: int, temperature: float, top_p: float,
                 top_k: int = 0, min_p: float | None = None, repetition_penalty: float = 1.0, quiet: bool = False):
        try:
            import vllm  # noqa: F401
        except ImportError as err:
            raise ConfigError("generation_backend: vllm needs the optional vllm package: pip install "
                              "preflab[vllm] (or use generation_backend: transformers).") from err
        self.model, self.tokenizer, self.weights_dir, self.quiet = model, tokenizer, weights_dir, quiet
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        # vLLM's spellings of "off": top_k -1, min_p 0.0
        self.top_k, self.min_p, self.repetition_penalty = top_k or -1, min_p or 0.0, repetition_penalty

    def generate(self, prompt_ids: list[list[int]], num_generations: int, seed: int) -> list[list[int]]:
        from vllm import LLM, SamplingParams

        save_for_vllm(self.model, self.tokenizer, self.weights_dir, self.quiet)
        llm = LLM(self.weights_dir, seed=seed)
        params = SamplingParams(n=num_generations, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                                min_p=self.min_p, repetition_penalty=self.repetition_penalty,
                                max_tokens=self.max_new_tokens, seed=seed)
        # its "Processed prompts" bar: off with disable_tqdm, plain lines in a log file (preflab.log_lines; a vLLM
        # whose use_tqdm takes no tqdm class reads it as True and draws its own bar)
        outs = llm.generate([{"prompt_token_ids": p} for p in prompt_ids], params,
                            use_tqdm=False if self.quiet else bar_class())
        return [list(c.token_ids) for o in outs for c in o.outputs]


def save_for_vllm(model, tokenizer, weights_dir: str, quiet: bool) -> None:
    """The policy's current weights and its tokenizer into weights_dir, which the vLLM engine loads each round; with
    quiet (the run's disable_tqdm) without transformers' "Writing model shards" bar, which save_pretrained draws
    every round otherwise (preflab.quiet.progress_bars_off, as the final save in preflab.loops.driver)."""
    with progress_bars_off(quiet), original_dropout_config(model):  # vLLM samples the model as given (no dropout)
        model.save_pretrained(weights_dir, safe_serialization=True)
        tokenizer.save_pretrained(weights_dir)


def make_generator(cfg, policy, tokenizer, accelerator=None, weights_dir: str | None = None) -> Generator:
    from preflab.loops.rollout import pad_id_of

    if cfg.generation_backend == "vllm":
        return VLLMGenerator(policy, tokenizer, weights_dir or f"{cfg.output_dir}/vllm-weights",
                             cfg.max_completion_length, cfg.temperature, cfg.top_p, **sampling_options(cfg),
                             quiet=bool(getattr(cfg, "disable_tqdm", False)))
    return TransformersGenerator(policy, tokenizer.eos_token_id, pad_id_of(tokenizer), cfg.max_completion_length,
                                 cfg.temperature, cfg.top_p, cfg.generation_batch_size, accelerator,
                                 **sampling_options(cfg))


def sampling_options(cfg) -> dict:
    """top_k, min_p and repetition_penalty of the config (TRL GRPOConfig's names and meanings)."""
    return dict(top_k=cfg.top_k, min_p=cfg.min_p, repetition_penalty=cfg.repetition_penalty)
