"""HyPO as the paper defines it: the DPO term on offline preference pairs, the reverse-KL term on fresh samples.

    preflab train examples/hypo_offline.yaml               # loss_type: hypo, hypo_online_samples: k
    HyPOTrainer(cfg).train()                               # from Python (models, tokenizer, data may be passed in)

Song, Swamy, Singh, Bagnell, Sun, 2024, "The Importance of Online Data: Understanding Preference Fine-tuning via
Coverage" (arXiv:2406.01462), HyPO: each optimizer step reads a batch of the offline preference dataset D_off
(exactly the pairs and order of the offline `dpo` task: same data path, same BatchPlan) for the contrastive term
and draws k fresh, unlabeled samples y_1..y_k ~ pi_theta(.|x) of the current policy for the prompt x of every pair
of that batch for the KL term:

    L(theta) = E_{D_off} -log sigmoid(beta Delta) + lam * E_x KL(pi_theta(.|x) || pi_ref(.|x))
    KL ~ (1/k) sum_i rho_i,  rho_i = S_theta(y_i) - S_ref(y_i)  (sequence log-ratio, token sum)
    gradient of the KL term: (1/k) sum_i (rho_i - mean_{j != i} rho_j) grad S_theta(y_i)   (RLOO, unbiased)

(methods/objectives.md §C #7; the objective is preflab.objectives.hypo). No judge or reward reads the samples.

Samples: drawn once per optimizer step, before its first forward, from the step's weights theta_t (the policy
before the step's update: every micro-batch of the step sees samples of the policy it differentiates), in eval
mode (no dropout), at temperature 1 over the full softmax (other temperatures or top_p would sample another
distribution than pi_theta; refused). The whole global batch's prompts are sampled together by
preflab.online.generator (chunks of generation_batch_size prompts, chunk c seeded by seed_s + c, seed_s a function
of (seed, step)), so the samples depend on (seed, step, weights) only: a resumed run draws the samples the
uninterrupted run drew, and 2 processes x batch b draw the same samples as 1 process x batch 2b. Evaluation draws
k samples per eval prompt the same way (seeded by the step), so eval_kl/online is the estimate on the eval prompts.

Checked against: methods/objectives.md §C #7 (from memory) and third-party summaries of the paper ("offline data
for contrastive optimization, online unlabeled data for KL regularization"; hyper-parameters beta, lambda, k for
RLOO); the paper's text and code were not reachable. Chosen here: the online prompts are the prompts of the step's
offline batch (the spec: "a prompt stream (can reuse offline prompts)"); the samples are at most
max_completion_length new tokens (required; the same option also caps the offline responses, as in plain DPO); a
sample cut there is scored as cut, so the term is the KL between the two policies' length-capped distributions. The older online recipe, where the DPO pairs are judged online samples
too, is `task: online` + `trainer: hypo_online_pairs` (preflab.online.trainers).

`preflab train` routes a task: dpo config whose objective reads these extras here (preflab.loops.cli.route_of,
preflab.cli.TASK_ROUTES), so that loops/ never imports online/.
"""
from __future__ import annotations

from preflab.errors import ConfigError
from preflab.loops.kinds import PairKind
from preflab.loops.offline import Trainer
from preflab.objectives.base import SequenceLogps
from preflab.online.generator import TransformersGenerator

ONLINE_KL_EXTRAS = ("online_policy_logps", "online_ref_logps")


def check_hypo_config(cfg) -> None:
    """Refuse the combinations under which the samples would not be fresh samples of pi_theta, or could not be
    drawn or scored: one ConfigError naming the option and what to set."""
    problems = []
    if cfg.task != "dpo":
        problems.append(f"loss_type: hypo with offline pairs runs under task: dpo, not task: {cfg.task} (for the "
                        "online recipe use task: online, trainer: hypo_online_pairs).")
    if not cfg.max_completion_length:
        problems.append("loss_type: hypo samples responses of the policy each step; set max_completion_length (the "
                        "most new tokens per sample, e.g. 64).")
    if cfg.temperature != 1.0 or cfg.top_p != 1.0:
        problems.append(f"loss_type: hypo estimates KL(pi_theta || pi_ref) on samples of pi_theta itself; temperature "
                        f"{cfg.temperature} / top_p {cfg.top_p} would sample another distribution. Set temperature: "
                        "1 and top_p: 1.")
    if cfg.precompute_ref_log_probs:
        problems.append("loss_type: hypo scores fresh samples with the reference at every step, so the reference "
                        "cannot be released after precomputing; set precompute_ref_log_probs: false.")
    if cfg.streaming:
        problems.append("loss_type: hypo reads its offline pairs whole (streaming: true is not supported for it); "
                        "set streaming: false.")
    if cfg.generation_backend != "transformers":
        problems.append(f"loss_type: hypo samples with generation_backend: transformers (the step's own weights), "
                        f"got {cfg.generation_backend!r}.")
    if problems:
        raise ConfigError(problems[0] if len(problems) == 1 else
                          f"{len(problems)} invalid options for loss_type: hypo:\n  " + "\n  ".join(problems))


class HyPOKind(PairKind):
    """Pairs read without requiring the online-KL extras as data columns (the trainer computes them)."""

    @staticmethod
    def prepare(cfg, tokenizer):
        from preflab.loops.prepare import prepare_examples

        return prepare_examples(cfg, tokenizer, "pairs", computed=ONLINE_KL_EXTRAS)


def refuse_online_kl_columns(cfg, splits) -> None:
    """A row (read from the dataset or given from Python) that carries one of the online-KL extras is refused:
    they are computed at every step from fresh samples of the policy, with gradient; a data column is a constant."""
    from preflab.loops.extras_producer import refuse_computed_columns

    refuse_computed_columns(cfg, splits, ONLINE_KL_EXTRAS,
                            "loss_type: hypo computes at every step from fresh samples of the policy (with gradient)")


def train_task(args) -> int:
    """`preflab train CONFIG` with task: dpo and loss_type: hypo (routed here by preflab.cli)."""
    from preflab.config import preflight
    from preflab.loops.cli import config_from_args, print_summary, quiet_third_party_warnings

    quiet_third_party_warnings()
    cfg = config_from_args(args)
    preflight(cfg)
    return print_summary(cfg, HyPOTrainer(cfg).train())


class HyPOTrainer(Trainer):
    """The offline Trainer plus k fresh samples of the current policy per pair for HyPO's online KL term."""

    computed_extras = ONLINE_KL_EXTRAS

    def __init__(self, cfg, policy=None, ref=None, tokenizer=None, train_data=None, eval_data=None, callbacks=None):
        check_hypo_config(cfg)
        self._samples: dict[int, list[list[int]]] = {}  # dataset position -> the k samples' token ids
        self._samples_step, self._prompts = None, {}
        super().__init__(cfg, policy, ref, tokenizer, train_data, eval_data, callbacks)
        refuse_online_kl_columns(cfg, (("train", self.train_data), ("eval", self.eval_data)))
        eos = self.tokenizer.eos_token_id
        self.generator = TransformersGenerator(self.policy, eos, self.pad_id, cfg.max_completion_length,
                                               1.0, 1.0, cfg.generation_batch_size, self.accelerator)

    def batch_kind(self, objective):
        return HyPOKind

    def _seed(self, step: int, eval_offset: int = 0) -> int:
        return ((self.cfg.seed * 7919 + step) * 100_003 + eval_offset) % (2**31 - 1)

    def _sample(self, prompts: list[list[int]], seed: int) -> list[list[list[int]]]:
        k = self.cfg.hypo_online_samples
        flat = self.generator.generate(prompts, k, seed)
        return [flat[i * k:(i + 1) * k] for i in range(len(prompts))]

    def _global_items(self, step: int) -> list[tuple[int, object]]:
        """(position, pair) of the step's whole global batch, in global order (the same for any world size)."""
        world, accum = self.accelerator.num_processes, self.cfg.gradient_accumulation_steps
        per_rank = [self.plan.indices(step, r) for r in range(world)]
        return [(i, self.train_data[i]) for m in range(accum) for r in range(world) for i in per_rank[r][m]]

    def micro_batches(self, step: int):
        mbs = super().micro_batches(step)
        if self._samples_step != step:
            items = self._global_items(step)
            self._prompts = {pos: list(p.prompt_ids) for pos, p in items}
            samples = self._sample([list(p.prompt_ids) for _, p in items], self._seed(step))
            self._samples = {pos: s for (pos, _), s in zip(items, samples)}
            self._samples_step = step
        for mb in mbs:  # the samples are scored too: they count toward tokens/s
            mb.tokens = mb.num_tokens + sum(len(self._prompts[i]) + len(c) for i in mb.index for c in self._samples[i])
        return mbs

    def score(self, layout, train: bool = True, positions: list[int] | None = None):
        batch = super().score(layout, train, positions)
        if positions is None:
            raise ConfigError("loss_type: hypo scores the fresh samples of each pair's prompt; pass the pairs' "
                              "dataset positions to HyPOTrainer.score().")
        if train:
            prompts, samples = [self._prompts[i] for i in positions], [self._samples[i] for i in positions]
        else:  # evaluation: fresh samples of the eval prompts, seeded by the step and the chunk
            prompts = [list(self.eval_data[i].prompt_ids) for i in positions]
            samples = self._sample(prompts, self._seed(self.step, 1 + positions[0]))
        batch.extras.update(self.online_extras(prompts, samples))
        return batch

    def online_extras(self, prompts: list[list[int]], samples: list[list[list[int]]]) -> dict:
        """online_policy_logps [B, k] (with gradient) and online_ref_logps [B, k]: sequence log-probs (token sums)
        of the samples under the policy and the reference."""
        from preflab.data.layout import padded

        k = self.cfg.hypo_online_samples
        seqs = [(p, c) for p, group in zip(prompts, samples) for c in group]
        layout = padded(seqs, self.pad_id).to(self.accelerator.device)
        with self.accelerator.autocast():
            policy = self.scorer(layout)
            ref, _ = self._reference(layout)
        pol = SequenceLogps(policy.token_logps, policy.mask).sum.view(len(prompts), k)
        refs = SequenceLogps(ref.token_logps, ref.mask).sum.view(len(prompts), k)
        return {"online_policy_logps": pol, "online_ref_logps": refs.detach()}

    def summary_extras(self) -> dict:
        return {**super().summary_extras(),
                "hypo": {"online_samples_per_prompt": self.cfg.hypo_online_samples,
                         "max_new_tokens": self.cfg.max_completion_length, "prompts": "the step's offline batch"}}
