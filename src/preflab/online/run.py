"""The online run: generation rounds feeding the shared training loop (loops/driver.py TrainingRun, step.py).

    preflab train examples/online/online_dpo.yaml            # task: online, trainer: <recipe>
    OnlineRun(cfg, policy=..., tokenizer=...).train()         # from Python (tests, notebooks)

Global step s belongs to generation round r = s // (steps_per_generation x num_iterations). The first step of a
round generates it (micro_batches): prompts_per_generation prompts drawn with a generator seeded by (seed, r),
K = num_generations samples each from the current policy (generator.py), judged (loops/judge.py, cached by
(prompt, completion)), turned into examples by the recipe (trainers.py), with the reference's and the round-start
policy's token log-probs computed once (examples.py). The round's examples are shuffled (seeded by (seed, r)) and
cut into steps_per_generation slices; a step reads one slice, split over processes and accumulation micro-batches
(micro-batch j of the world x accumulation ones holds examples j, j + world x accumulation, ...; one left empty
is scored with weight 0, so the update does not depend on the split); num_iterations passes repeat the slices
(TRL GRPO's mu). A round with no examples at all (every group tied) takes zero-gradient steps (Adam's moments
still move the weights), counted in summary.json `online.empty_steps`.

Layout: with layout prefix_shared (the default) or prefix_packed, the round's reference / old-policy log-probs and
every step score `[prompt | completion_1 | ... ]` in one row per example (preflab.data.prefix), so a prompt is
computed once per example, not once per completion (same log-probs to float rounding); layout padded, or a model
that cannot take a custom 4-D mask, gets one right-padded row per completion.

Reference: pi_0 (a frozen copy, or LoRA adapters off) when refresh_reference_every = 0; the round-start policy
when refresh_reference_every = 1 (iterative DPO, SPPO, GPO: no copy is kept, its log-probs are computed at the
round start); a copy refreshed every n rounds otherwise.

Checkpoints: the driver's checkpoint (policy, optimizer, scheduler, RNG) plus online-state/step-<n>/ written
atomically before it: the pending round (examples with their precomputed log-probs, JSON), the judgment cache and
counters, and a refreshed reference's weights. Everything else is a function of (seed, round), so a run stopped at
any step and resumed ends with the same weights as an uninterrupted one.

Other inputs than token-id prompts (preflab.online.vision: image prompts) override the hooks _generate, _layout,
_group_layout, _empty_layout and scorer_class; nothing else of the run changes.

Tool rollouts (online/tool_rollout.py, group recipes only): a Task's `generator` replaces make_generator; what it
leaves in `last_columns` (e.g. num_tool_calls, executed calls) joins each completion's judge columns, its
`last_loss_masks` become the examples' `loss_mask` (tool observations conditioned on, left out of the loss and of
dapo's token count) and `last_metrics` the round's metrics. A Task's `state` (e.g. the OTC tracker) is checkpointed
with the online state; `judge_cache: False` for judges whose score of a text changes over the run.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from preflab.checkpoint import check_files, file_records, fsync_dir, fsync_file
from preflab.data.layout import bucket
from preflab.errors import ConfigError, DataError, PreflabError, WriteFailed
from preflab.loops.driver import TrainingRun
from preflab.loops.judge import Judge, not_applicable_counts
from preflab.loops.launch import make_accelerator
from preflab.loops.optimizer import make_optimizer
from preflab.loops.reference import reference_scores, refresh_reference
from preflab.loops.rollout import decode, pad_id_of, prepare_prompts
from preflab.models.attention import refuse_flex_training_on_cpu
from preflab.models.dropout import original_dropout_config
from preflab.models.adapters import is_lora
from preflab.objectives.base import ListBatch, SequenceLogps
from preflab.objectives.grpo import group_advantages, normalize_then_sum_advantages
from preflab.online.examples import (Example, OnlineMicroBatch, Round, group_layout, online_layout, pair_layout,
                                     pair_side_values, sequence_logps, shared_pair_layout, shared_prompt_layout,
                                     token_matrix)
from preflab.online.generator import make_generator
from preflab.online.trainers import (ROUTER_LOSS_TRAINERS, build_examples, preference_log_odds, preference_matrix,
                                     reward_log_odds)
from preflab.online_options import task_eval_strategy_no_notes
from preflab.online_recipes import RENAMED, TEMPERATURE_SCORED, TRAINERS
from preflab.rank_agreement import ranks_agree
from preflab.scoring.lm import LogProbScorer, Scores, backbone_and_head, split_pairs, unwrap


# online runs call the policy outside the engine's wrapper (make_accelerator refuses FSDP2 / ZeRO-3)
WHOLE_WEIGHTS = ("each rank samples its share of a round's prompts from the policy, and scores the round, outside "
                 "the engine's wrapper")


@dataclass
class RoundPlan:
    """What the driver reads of a plan: steps per 'epoch' (a generation round here) and examples per step."""
    steps_per_epoch: int
    global_batch: int
    unused_rows_per_epoch: int = 0


@dataclass
class JudgedRound:
    """A round's judged completions and the examples built from them (OnlineRun._judge_and_build): N = P x K
    completions, group-major."""
    texts: list             # [N] the completions as the judges saw them (text, or tool-calling messages)
    flat: torch.Tensor      # [N] combined scores, NaN where dropped
    per_fn: torch.Tensor    # [N, J] each judge's own scores
    has_eos: list           # [N] whether each completion ended with eos
    dropped: int            # completions scored NaN
    scores: torch.Tensor    # [P, K] `flat` by prompt
    completions: list       # [P][K] token ids
    examples: list          # the recipe's examples, log-probs precomputed (group recipes: with advantages)
    counts: dict            # the example builder's counts (pairs/ties_dropped, ...)
    loss_masks: list | None  # [N] a tool rollout's masks (None: every completion token trained)


# What the pairs of a recipe that trains the config's loss_type (online_dpo, iterative_dpo) carry in batch.extras.
ONLINE_PAIR_EXTRAS = ("score_chosen", "score_rejected")
LAYOUT_CACHE = 8  # host pair layouts kept for reuse by OnlineRun._pair_layout (the last micro-batches')
LAYOUT_CACHE_MASK = 1 << 22  # attention-mask elements above which a layout is not kept (4 MiB of bool)


def check_online_pair_extras(objective, spec, cfg) -> None:
    """ConfigError before any model loads when the config's objective needs extras that online pairs do not carry
    (it used to fail at the first step, after a generation round): online pairs have no data columns."""
    if spec.loss_type is not None:  # the recipe's own objective gets what its recipe builds
        return
    missing = [k for k in objective.required_extras if k not in ONLINE_PAIR_EXTRAS]
    if missing:
        raise ConfigError(
            f"loss_type {cfg.loss_type!r} needs batch.extras {missing}, which trainer {cfg.trainer!r} does not "
            f"build: its pairs are sampled and judged, with no data columns; they carry {list(ONLINE_PAIR_EXTRAS)} "
            "(the judge's scores of the chosen and rejected completions). Read those in the objective, or train it "
            "offline (task: dpo) on data with those columns.")


def refuse_past_positions(rows, policy, max_new_tokens: int | None, source: str) -> None:
    """A prompt whose tokens plus max_completion_length new ones need more positions than the policy has would
    index past its position table mid-generation (torch.embedding's IndexError, a traceback in the first round):
    refused before training, naming the first such prompt, as the offline tasks cap max_length at the model's
    positions (models.load.cap_max_length)."""
    from preflab.models.load import max_positions

    limit = max_positions(policy)
    if limit is None or not max_new_tokens:
        return
    over = [r for r in rows if len(r.prompt_ids) + max_new_tokens > limit]
    if not over:
        return
    first = over[0]
    text = first.prompt if isinstance(first.prompt, str) else json.dumps(first.prompt, ensure_ascii=False)
    fix = (f"Set max_prompt_length to at most {limit - max_new_tokens} (a longer prompt keeps its end), shorten "
           "those prompts, or lower max_completion_length." if max_new_tokens < limit else
           f"Lower max_completion_length below {limit}.")
    raise DataError(f"{source}: {len(over)} of {len(rows)} prompt(s) need more positions than the policy's {limit}: "
                    f"the first ({text[:60]!r}...) is {len(first.prompt_ids)} tokens, and max_completion_length="
                    f"{max_new_tokens} new tokens after it would index past the position table mid-generation. "
                    + fix)


def round_prompt_indices(total: int, n: int, r: int, shuffle: bool, generator: torch.Generator) -> list[int]:
    """The indices of round r's n prompts among `total`. shuffle (the default): n drawn without replacement by
    `generator` (seeded per round). shuffle_dataset: false (TRL GRPOConfig): the prompts in dataset order, as TRL's
    RepeatSampler(shuffle=False) walks them: rounds of n consecutive prompts, a last incomplete round of an epoch
    dropped (range(total) cut into chunks of n, only whole chunks kept), then from the first prompt again."""
    if shuffle:
        return torch.randperm(total, generator=generator)[:n].tolist()
    start = (r % (total // n)) * n
    return list(range(start, start + n))


class OnlineRun(TrainingRun):
    scorer_class = LogProbScorer  # the policy's scorer (VisionOnlineRun: the vision scorer)
    prompt_sharing = True  # layout prefix_shared may score a prompt once per example (VisionOnlineRun: no)

    def __init__(self, cfg, policy=None, ref=None, tokenizer=None, task=None, tools=None, environment_factory=None):
        if cfg.task != "online":
            raise ConfigError(f"OnlineRun needs task: online, got {cfg.task!r}.")
        if policy is not None:  # loading options beside a model given from Python: applied or refused
            from preflab.models.given import check_given_models

            check_given_models(cfg, policy, ref)  # (no tokenizer: trust_remote_code also loads judges' models)
        self.cfg = cfg
        self.spec = TRAINERS[cfg.trainer]
        self.objective = cfg.objective()
        check_online_pair_extras(self.objective, self.spec, cfg)
        self.score_temperature = scoring_temperature(cfg)
        self.entropy_control = None  # GRPO's entropy bonus: the coefficient over the run (online/entropy_control.py)
        if "token_entropy_grad" in self.objective.token_needs:
            from preflab.online.entropy_control import EntropyCoefficient

            if self.scorer_class is not LogProbScorer:
                raise ConfigError(f"entropy_coef / use_adaptive_entropy (GRPO's entropy bonus) need the token "
                                  f"entropies with gradient, which {self.scorer_class.__name__} does not compute; "
                                  "remove them for this prompt source.")
            self.entropy_control = EntropyCoefficient(self.objective)
        if cfg.pad_to_multiple_of and self.scorer_class is not LogProbScorer:  # as the offline Trainer
            raise ConfigError(f"pad_to_multiple_of applies to text models; {type(self).__name__} scores with "
                              f"{self.scorer_class.__name__}: remove pad_to_multiple_of from the config.")
        self.accelerator = acc = make_accelerator(cfg, whole_weights=WHOLE_WEIGHTS)
        self.out, self.main = Path(cfg.output_dir), acc.is_main_process
        if cfg.trainer in RENAMED and self.main:
            print(f"preflab: note: {RENAMED[cfg.trainer][1]}")
        if cfg.online_task == "game":
            from preflab.online.game import game_setup

            task, tokenizer, policy = game_setup(cfg, policy)
        elif task is None:
            from preflab.online.tasks import load_task

            task, tokenizer, policy = load_task(cfg, tokenizer, policy)
        if tokenizer is None:
            from preflab.models.load import load_tokenizer

            tokenizer = load_tokenizer(cfg.model_name_or_path, cfg.trust_remote_code)
        if policy is None:
            from preflab.models.load import load_models

            policy, ref = load_models(cfg, tokenizer)
        self.task, self.tokenizer, self.policy = task, tokenizer, policy
        if cfg.cast_lm_head_to_fp32:  # TRL's GRPOConfig option: before the reference copy, which then has it too
            from preflab.models.fp32_head import cast_lm_head_to_fp32

            cast_lm_head_to_fp32(policy)
            if ref is not None:
                cast_lm_head_to_fp32(ref, "the reference model")
        # a FlexAttention policy on the CPU: refused here, with train()'s message (TrainingRun._train asks again),
        # before the custom-mask probe (six compiled FlexAttention forwards), the generator and the task's "before"
        # evaluation (a whole generation pass) are run for a run that could not take a step
        refuse_flex_training_on_cpu(policy, acc.device)
        from preflab.models.load import disable_dropout_of, enable_gradient_checkpointing, moe_aux_loss_note

        self.router_coef = self._router_coef(policy)  # TRL's GRPOTrainer adds the MoE router loss: grpo trainers too
        self.logs_step_time = cfg.trainer in ROUTER_LOSS_TRAINERS  # and logs step_time (TrainingRun.logs_step_time)
        note = None if self.router_coef is not None else moe_aux_loss_note(policy, cfg.trainer)
        if note and self.main:
            print(f"preflab: note: {note}")

        disable_dropout_of(cfg, policy, ref)  # models given from Python (or a task) too, not only loaded ones
        if cfg.gradient_checkpointing:  # a model given from Python (or a task's) too, as the offline Trainer does
            from preflab.checkpointing_options import checkpoint_kwargs

            enable_gradient_checkpointing(policy, checkpoint_kwargs(cfg))
        if all(getattr(unwrap(m), "config", None) is not None for m in (policy, ref) if m is not None):
            from preflab.models.segment_attention import set_attention_mode

            set_attention_mode(cfg.attention, policy, ref)
        if "token_kl" in self.objective.token_needs:
            raise ConfigError(f"objective {cfg.loss_type!r} needs token-level reference quantities at every step; "
                              "online runs precompute reference log-probs per round. Choose another loss_type.")
        self.want_hidden = "hidden" in self.objective.token_needs
        self.needs_ref = self.objective.needs_reference or self.spec.online_kl
        self.ref = None
        # (the game's examples carry their exact reference log-probs: no reference model is scored there)
        if self.needs_ref and cfg.refresh_reference_every != 1 and cfg.online_task != "game":
            from preflab.loops.reference import make_reference

            self.ref = make_reference(policy, True, ref)
            if cfg.refresh_reference_every > 1 and (self.ref is None or is_lora(policy)):
                raise ConfigError("refresh_reference_every > 1 copies the policy into the reference, which needs a "
                                  "full (non-LoRA) policy; merge the adapters or use refresh_reference_every: 1.")
        if getattr(task, "reward_aggregator", None) is not None and cfg.reward_weights is not None:
            raise ConfigError("the task's reward_aggregator weighs the judges per prompt; remove reward_weights.")
        if getattr(task, "reward_aggregator", None) is not None and cfg.multi_objective_aggregation != \
                "sum_then_normalize":
            raise ConfigError("multi_objective_aggregation: normalize_then_sum weighs each judge's group-normalised "
                              "rewards with the fixed reward_weights; the task's reward_aggregator weighs the judges "
                              "per prompt. Use one of them.")
        # environment_factory (TRL GRPOTrainer's): stateful environments whose methods are tools, probed here
        self.environments = self._environment_set(cfg, task, environment_factory, tools)
        self.round_environments: list | None = None  # the current round's instances, one per completion
        self.prompts_from_reset = self._prompts_from_reset(cfg, task)  # no dataset: the prompts come from reset
        judges, weights = self._judges_and_weights(cfg, task)
        # judge_timeout_s: each call of the judges' code within that many seconds (the game's judge is its matrix)
        self.judge = Judge(judges, weights=weights,
                           cache=getattr(task, "judge_cache", True) and self.environments is None,
                           timeout_s=None if cfg.online_task == "game" else cfg.judge_timeout_s)
        if self.main and self.judge.within_group_note():
            print(f"preflab: note: {self.judge.within_group_note()}", flush=True)
        check_gpo_judges(self.spec, cfg, self.judge)
        if cfg.trainer == "upo" and cfg.upo_uncertainty == "mc_dropout":  # UPO's estimator: refused up front if unfit
            from preflab.online.upo import dropout_estimator

            self.upo_estimator = dropout_estimator(self.judge.judges, self.judge.names)
        self.pad_id = pad_id_of(tokenizer)
        self.tools = self._tool_functions(cfg, task, tokenizer, tools)
        self.data_report = dict(getattr(task, "data_report", None) or {})
        prompts, self.no_prompt_rows = self._default_prompts(task)  # rows without a prompt: reset gives it (TRL)
        self.rows = getattr(task, "rows", None) or prepare_prompts(prompts, tokenizer, cfg.max_prompt_length,
                                                                   report_to=self.data_report,
                                                                   truncation_mode=cfg.truncation_mode,
                                                                   chat_template_kwargs=cfg.chat_template_kwargs,
                                                                   tools=self._prompt_tools())
        source = (self.data_report.get("prompt_rows") or {}).get("source")
        refuse_past_positions(self.rows, policy, cfg.max_completion_length, source or "the prompts")
        tokenized = self.data_report.get("prompt_tokenize")
        if isinstance(tokenized, dict) and source and not tokenized.get("source"):
            tokenized["source"] = source  # (prepare_prompts does not know the file)
        cut = self.data_report.get("prompt_tokenize", {}).get("prompt_truncated", 0)
        if cut and self.main:
            print(f"preflab: note: {cut} of {len(self.rows)} prompts were cut to max_prompt_length="
                  f"{cfg.max_prompt_length} (their start is dropped, as TRL 0.x did).", flush=True)
        self._check_heldout_prompts(task, policy, tokenizer)
        self._note_fewer_prompts_than_a_round()
        self.round_len = cfg.steps_per_generation * cfg.num_iterations
        if cfg.online_task == "game" and cfg.trainer in ("egpo", "online_ipo"):
            self.round_len = 1  # every step is a round: its opponent (EGPO: the extrapolated one) is recomputed
        self.total_steps = cfg.max_steps
        self._note_partial_last_round()
        world = acc.num_processes
        self.plan = RoundPlan(self.round_len, cfg.per_device_train_batch_size * world * cfg.gradient_accumulation_steps)
        self._resolve_epoch_schedule()
        self.scorer = self.scorer_class(policy, cfg.chunk_tokens, self.score_temperature)
        self.params = [p for p in policy.parameters() if p.requires_grad]
        self.optimizer, self.scheduler = make_optimizer(cfg, self.params, self.total_steps, [policy])
        policy.to(acc.device)
        if self.ref is not None:
            self.ref.to(acc.device)
        self.share_prompt = self._shares_prompt()
        self.scorer, self.optimizer = acc.prepare(self.scorer, self.optimizer)
        self.sync_module, self.checkpoint_module = self.scorer, self.policy
        self.params = [p for p in policy.parameters() if p.requires_grad]  # FSDP2 replaces them (DTensor)
        if self.tools:  # TRL GRPOTrainer's tools=: the run's generator inside the tool-calling loop
            from preflab.online.tool_calling import make_tool_calling_generator

            self.generator = make_tool_calling_generator(cfg, policy, tokenizer, acc, self.tools)
        else:
            self.generator = (getattr(task, "generator", None) or make_generator)(cfg, policy, tokenizer, acc)
        if hasattr(self.generator, "last_loss_masks") and self.spec.kind != "groups":
            raise ConfigError(f"tool rollouts train group recipes (grpo, dapo, ...), not trainer {cfg.trainer!r}.")
        self.pending: Round | None = None
        self.examples_trained = 0  # examples in this session's steps (summary.json train_examples_seen)
        self.counts = {"rounds": 0, "empty_steps": 0, "empty_completions": 0, "judge_dropped": 0, "completions": 0}
        if self.no_prompt_rows and not self.prompts_from_reset:  # rows without a prompt (reset gives it)
            self.counts["environment_rows_without_prompt"] = len(self.no_prompt_rows)
        self.refreshes = 0
        if self.main:  # a written eval_strategy: no on the demo / game: their own end-of-run evaluation still runs
            for said in task_eval_strategy_no_notes(cfg):
                print(f"preflab: note: {said}", flush=True)
        self.before = self._evaluate_task() if task.evaluate is not None else None

    def _evaluate_task(self) -> dict:
        """The task's evaluation of the policy; with tools, answered with them (dataset_evaluate's tools= and
        accelerator=: _tool_functions refuses an evaluate that cannot take them). Agreed by every rank
        (_evaluation_agreement)."""
        if self.environments is not None:  # (the environments' tools with them)
            result = self.task.evaluate(self.policy, self.tokenizer, tools=self.tools, accelerator=self.accelerator,
                                        environments=self.environments)
        else:
            given = {"tools": self.tools} if self.tools else {}
            if self.tools or getattr(self.task.evaluate, "takes_accelerator", False):  # (dataset_evaluate: judged
                given["accelerator"] = self.accelerator                                 # on the main process)
            with self._evaluation_agreement():
                result = self.task.evaluate(self.policy, self.tokenizer, **given)
        self._say_eval_judge_failures(result)
        return result

    def _say_eval_judge_failures(self, result: dict) -> None:
        """A note (main process) when a judge raised on held-out answers at this evaluation (dataset_evaluate's
        judge_failed: scored NaN, left out of eval_reward and the win rate; logged as eval_judge/failed, summary.json
        eval_judge_failed_before / _after), with the first failure's text: such an answer used to pass as one no
        judge scored, its error unsaid."""
        failed = result.get("judge_failed", 0)
        if not failed or not self.main:
            return
        step = getattr(self, "step", 0)
        when = f"at step {step}" if getattr(self, "before", None) is not None else "of the starting policy"
        print(f"preflab: note: the evaluation {when}: a judge raised on {failed} of {result.get('answers', '?')} "
              "held-out answers, scored NaN and left out of eval_reward and the win rate (eval_judge/failed). "
              f"{result.get('judge_failure', '')}".rstrip(), flush=True)

    def _evaluation_agreement(self):
        """Where an evaluation of the held-out prompts runs (the starting policy's when the run is built, each one at
        eval_steps, the final one), on several processes: every rank answers every held-out prompt itself; a task's
        own evaluate judges them on every rank too, so a judge that times out or refuses its values on one rank
        stopped that rank alone, and the others went on into the next step's collectives and waited there until the
        collective's timeout, saying nothing (dataset_evaluate judges on the main alone and agrees its own stretches:
        an error agreed inside reaches this agreement on every rank and is raised with its step, no collective).
        preflab.rank_agreement.ranks_agree after the evaluation: one all-reduce of a failure flag per evaluation
        (ordinary steps add none), and every rank raises RankFailure naming each failed rank and its error. With
        environments the main process makes every reset and judge call and sends its result or its failure
        (environments.begin_rollouts, judge_rollouts: main_result): _evaluate_task takes no agreement there. One
        process: the evaluation's own error, unchanged."""
        step = getattr(self, "step", 0)
        when = f"at step {step}" if getattr(self, "before", None) is not None else "of the starting policy"
        return ranks_agree(f"the evaluation {when} of the held-out prompts failed")

    def _environment_set(self, cfg, task, given, tools):
        """The run's Environments (preflab.online.environments: TRL GRPOTrainer's environment_factory, from Python
        or the config's environment_factory), their tools after the standalone ones; None without. Refused with a
        held-out evaluation (it would answer without the environments)."""
        if given is None and not cfg.environment_factory:
            return None
        if given is not None and cfg.environment_factory:
            raise ConfigError("environment_factory is given both from Python (OnlineRun(environment_factory=...)) and "
                              "in the config; give one.")
        if getattr(task, "evaluate", None) is not None and not getattr(task.evaluate, "takes_environments", False):
            raise ConfigError("environment_factory: the task's evaluation answers without environments (it is not "
                              "online_task: dataset's held-out evaluation, which answers with them), so its reward "
                              "would not be the trained agent's; give the task an evaluate that takes environments=, "
                              "or none.")
        from preflab.online.environments import Environments, load_environment_factories
        from preflab.online.tool_calling import load_tools

        if tools and cfg.tools:
            raise ConfigError("tools are given both from Python (OnlineRun(tools=...)) and in the config; give one.")
        standalone = load_tools(tools or cfg.tools) if (tools or cfg.tools) else []
        return Environments(load_environment_factories(given if given is not None else cfg.environment_factory),
                            standalone)

    def _default_prompts(self, task) -> tuple[list, frozenset]:
        """(the task's prompt rows, the positions of those without a prompt): with environments a dict row without
        a "prompt" key gets TRL's one empty user message and its prompt from reset (environments.default_prompts;
        counted in summary.json online.environment_rows_without_prompt and said); without, the rows as given (one
        without a prompt is refused by prepare_prompts)."""
        if self.environments is None or getattr(task, "rows", None) is not None:
            return task.prompts, frozenset()
        from preflab.online.environments import default_prompts

        prompts, absent = default_prompts(task.prompts)
        if absent and self.main and not self.prompts_from_reset and not self.data_report.get("prompt_rows"):
            print(f"preflab: data: {len(absent)} of {len(prompts)} prompt rows have no 'prompt': each one's prompt is "
                  "the text environment_factory's reset returns (TRL's default: one empty user message), drawn under "
                  "a seed per prompt and round.", flush=True)  # (a dataset's rows: said by online_task)
        return prompts, absent

    def _prompts_from_reset(self, cfg, task) -> bool:
        """Whether the task's prompts are placeholders whose text reset gives (TRL's GRPOTrainer without a
        train_dataset; Task.prompts_from_reset): it needs environments, refused without, and
        environments.check_reset_only's conditions (one factory, max_steps, no eval_fraction)."""
        if not getattr(task, "prompts_from_reset", False):
            return False
        if self.environments is None:
            raise ConfigError("the task has no prompts of its own (prompts_from_reset: the environment's reset gives "
                              "them), and the run has no environment_factory; give one, or prompts.")
        from preflab.online.environments import check_reset_only

        check_reset_only(cfg, self.environments.multi)
        return True

    def _judges_and_weights(self, cfg, task):
        """The task's judges and weights (reward_weights, or its reward_aggregator); with environments one more
        judge per environment class with get_reward (environments.with_environment_judges: weight 1)."""
        judges = list(task.judges) if isinstance(task.judges, (list, tuple)) else [task.judges]
        weights = getattr(task, "reward_aggregator", None) or cfg.reward_weights
        if self.environments is None:
            return judges, weights
        from preflab.online.environments import with_environment_judges

        return with_environment_judges(judges, weights, self.environments)

    def _prompt_tools(self, held_out: bool = False):
        """What the prompts render (prepare_prompts' tools): the run's tools, or with environments each row's own
        environment's tools (a row naming an unknown environment is refused there, as a training or a held-out
        prompt, with its file and line when the task knows them: _row_place)."""
        envs = self.environments
        if envs is None:
            return self.tools
        place = self._row_place(held_out)
        return lambda ex: envs.tools[envs.name_of(ex.row_id, ex.extras, place)]

    def _row_place(self, held_out: bool = False):
        """How a refusal names a prompt row (environments.row_places): a training or a held-out (eval) prompt, and
        where it was read when the task knows (Task.prompt_places / heldout_places)."""
        from preflab.online.environments import row_places

        if held_out:
            return row_places("held-out (eval) prompt", getattr(self.task, "heldout_places", None))
        return row_places("training prompt", getattr(self.task, "prompt_places", None))

    def _tool_functions(self, cfg, task, tokenizer, given) -> list:
        """The run's tool functions (TRL GRPOTrainer's tools=): `given` from Python, else the config's `tools`
        (preflab.online.tool_calling.load_tools); with environments, those and every environment's methods (TRL's
        self.tools); [] without. ConfigError, before any round, for a task with its own generator (tag-syntax tool
        rollouts), a prompt source other than text conversations, or a tokenizer that cannot run a tool-calling
        conversation (its reason)."""
        if not given and not cfg.tools and self.environments is None:
            return []
        if given and cfg.tools:
            raise ConfigError("tools are given both from Python (OnlineRun(tools=...)) and in the config; give one.")
        from preflab.online.tool_calling import check_tool_tokenizer, load_tools

        tools = self.environments.all_tools if self.environments is not None else load_tools(given or cfg.tools)
        if getattr(task, "generator", None) is not None:
            raise ConfigError("tools: the task samples with a generator of its own (e.g. the otc recipe's tag-syntax "
                              "tool rollouts, preflab.online.tool_rollout); use one of the two.")
        if self.spec.kind != "groups" or type(self)._generate is not OnlineRun._generate:
            raise ConfigError(f"tools: tool calling trains the group recipes (grpo, dapo, rloo, ...) on text "
                              f"conversations; not trainer {cfg.trainer!r} with {type(self).__name__}.")
        if self.spec.scores == "mcts" or (cfg.trainer == "tpo" and cfg.tpo_tree_depth > 1):
            raise ConfigError(f"tools: trainer {cfg.trainer!r} grows its own sample trees; tool calling samples "
                              "with the run's generator. Leave tools out for it.")
        if cfg.generation_backend == "vllm":
            raise ConfigError("tools: with generation_backend: vllm every tool-calling turn would save the policy and "
                              "start a new vLLM engine (the vLLM generator loads the weights per generate call); "
                              "tool calling samples with generation_backend: transformers for now.")
        if getattr(task, "evaluate", None) is not None and not getattr(task.evaluate, "takes_tools", False):
            raise ConfigError("tools: the task's evaluation answers without tools (it is not online_task: dataset's "
                              "held-out evaluation, which answers with them), so its reward would not be the trained "
                              "agent's; give the task an evaluate that takes tools= and accelerator=, or none.")
        check_tool_tokenizer(tokenizer, cfg.chat_template_kwargs, cfg.model_name_or_path)
        return tools

    def _shares_prompt(self) -> bool:
        """Whether the round's scoring and the steps lay out each example as `[prompt | completion_1 | ...]` (the
        prompt computed once per example instead of once per completion; same token log-probs as one row per
        completion, to float rounding): layout prefix_shared (the default) or prefix_packed, and a transformers
        policy (and reference) that takes a custom 4-D attention mask; else one right-padded row per completion
        (layout padded, or a model that cannot: said once by effective_layout)."""
        from preflab.models.attention import effective_layout

        if not self.prompt_sharing or self.cfg.layout not in ("prefix_shared", "prefix_packed"):
            return False
        models = [m for m in (self.policy, self.ref) if m is not None]
        if any(getattr(unwrap(m), "config", None) is None for m in models):  # not a transformers model (game task)
            return False
        return effective_layout("prefix_shared", *models) == "prefix_shared"

    # ------------------------------------------------------------------ generation rounds
    def _round_seed(self, r: int) -> int:
        return (self.cfg.seed * 7919 + r) * 100_003

    @torch.no_grad()
    def _token_logps(self, model_scores, sequences: list[tuple[list[int], list[int]]],
                     row_ids: list[int] | None = None) -> list[list[float]]:
        row_ids = row_ids if row_ids is not None else [-1] * len(sequences)
        out = []
        b = max(1, self.cfg.per_device_eval_batch_size)
        for i in range(0, len(sequences), b):
            layout = self._layout(sequences[i:i + b], row_ids[i:i + b]).to(self.accelerator.device)
            scores = model_scores(layout)
            for row, m in zip(scores.token_logps, scores.mask):
                out.append(row[m].float().cpu().tolist())
        return out

    # hooks that a run with other inputs (VisionOnlineRun: image prompts) overrides
    def _generate(self, rows, k: int, seed: int) -> list[list[int]]:
        """k completions per prompt row, group-major."""
        return self.generator.generate([row.prompt_ids for row in rows], k, seed)

    def _rounded(self, layout):
        """`layout` with its rows right-padded to a multiple of pad_to_multiple_of positions (TRL's option; exact:
        preflab.data.layout.bucket), as the offline step's collate does: a round's scoring and steps repeat shapes."""
        return bucket(layout, self.cfg.pad_to_multiple_of, self.pad_id)

    def _layout(self, sequences: list[tuple[list[int], list[int]]], row_ids: list[int]):
        """A padded layout of (prompt_ids, completion_ids) sequences, row_ids[i]: the prompt row of sequence i."""
        from preflab.data.layout import padded

        return self._rounded(padded(sequences, self.pad_id))

    def _group_layout(self, examples: list[Example]):
        """All completions of the examples (groups), group-major."""
        if self.share_prompt:
            return self._rounded(shared_prompt_layout(examples, self.pad_id, lambda e: e.completions))
        return self._rounded(group_layout(examples, self.pad_id))

    def _pair_layout(self, examples: list[Example]):
        """[chosen_1..B, rejected_1..B] of pair examples. The host layouts of the last few micro-batches are kept
        (LAYOUT_CACHE entries, keyed by their examples' tokens) and reused for examples holding the same tokens: a
        round's later steps over the same examples, EGPO's half and full step, the game's rounds (always the same
        answer pairs), instead of collating them again every step. Layouts whose attention mask exceeds
        LAYOUT_CACHE_MASK elements are not kept (their forward dwarfs the collation; the cache stays a few MB)."""
        key = (self.share_prompt, tuple((e.row_id, tuple(e.prompt_ids), tuple(e.completions[0]),
                                         tuple(e.completions[1])) for e in examples))
        cache = self.__dict__.setdefault("_pair_layouts", {})
        layout = cache.pop(key, None)
        if layout is None:
            layout = self._rounded(shared_pair_layout(examples, self.pad_id) if self.share_prompt
                                   else pair_layout(examples, self.pad_id))
            if layout.attention_mask is not None and layout.attention_mask.numel() > LAYOUT_CACHE_MASK:
                return layout
        cache[key] = layout  # the most recently used last
        while len(cache) > LAYOUT_CACHE:
            cache.pop(next(iter(cache)))
        return layout

    @torch.no_grad()
    def _example_logps(self, model_scores, examples: list[Example]) -> list[list[float]]:
        """Token log-probs of every sequence of the examples (Example.sequences(), example-major): with prompt
        sharing one `[prompt | sequence_1 | ...]` row per example, up to per_device_eval_batch_size sequences per
        forward (at least one example); else _token_logps over one row per sequence."""
        if not self.share_prompt:
            seqs = [(e.prompt_ids, c) for e in examples for c in e.sequences()]
            return self._token_logps(model_scores, seqs, [e.row_id for e in examples for _ in e.sequences()])
        b = max(1, self.cfg.per_device_eval_batch_size)
        chunks, current, n = [], [], 0
        for e in examples:
            k = len(e.sequences())
            if current and n + k > b:
                chunks.append(current)
                current, n = [], 0
            current.append(e)
            n += k
        chunks.append(current)
        out = []
        for chunk in chunks:
            scores = model_scores(self._rounded(shared_prompt_layout(chunk, self.pad_id)).to(self.accelerator.device))
            for row, m in zip(scores.token_logps, scores.mask):
                out.append(row[m].float().cpu().tolist())
        return out

    def _empty_layout(self):
        """Two pad-token completions of the first prompt: scored with weight 0 by an empty micro-batch."""
        return self._rounded(pair_layout([Example(-1, self.rows[0].prompt_ids, [[self.pad_id], [self.pad_id]])],
                                         self.pad_id))

    def _policy_scores(self, layout):
        return self.scorer_class(self.policy, self.cfg.chunk_tokens, self.score_temperature)(layout)

    def _reference_source(self):
        if self.cfg.refresh_reference_every == 1:
            return self._policy_scores
        return lambda layout: reference_scores(self.policy, self.ref, layout, self.cfg.chunk_tokens,
                                               self.score_temperature)[0]

    def _judge_cache_context(self, rows, K: int, n: int):
        """Per completion, what identifies its prompt in the judge cache beyond the prompt text and columns (None:
        nothing; VisionOnlineRun: its images)."""
        return None

    def _judge_images(self, rows, K: int, n: int):
        """Per completion, its prompt's images for the reward functions' `images` keyword (None: text prompts;
        VisionOnlineRun: the row's images)."""
        return None

    def _judge_round(self, rows, ids, K):
        prompts = [rows[i // K].prompt for i in range(len(ids))]
        chat = [isinstance(p, list) for p in prompts]
        texts = [decode(self.tokenizer, c, ch) for c, ch in zip(ids, chat)]
        conversations = getattr(self.generator, "last_messages", None)
        if conversations:  # tool calling: TRL's completions, the assistant turns (with tool_calls) and tool messages
            texts = [list(m) for m in conversations]
        info = getattr(self.generator, "last_columns", None) or [{}] * len(ids)  # tool rollouts: num_tool_calls
        columns = [{**rows[i // K].columns, **info[i]} for i in range(len(ids))]
        if self.environments is not None:
            flat, per_fn = self._judge_with_environments(prompts, texts, K, columns, ids)
        else:
            flat, per_fn = self.judge(prompts, texts, [i // K for i in range(len(ids))], columns, ids,
                                      self._judge_cache_context(rows, K, len(ids)),
                                      images=self._judge_images(rows, K, len(ids)))
        eos = self.tokenizer.eos_token_id
        has_eos = [bool(c) and c[-1] == eos for c in ids]
        if self.cfg.missing_eos_penalty is not None:
            flat = flat - self.cfg.missing_eos_penalty * (~torch.tensor(has_eos)).double()
        return prompts, texts, flat, per_fn, has_eos

    def _new_round(self, r: int) -> Round:
        cfg, K = self.cfg, self.cfg.num_generations
        if cfg.online_task == "game":
            from preflab.online.game import game_round

            return game_round(self, r)
        g = torch.Generator().manual_seed(self._round_seed(r))
        n = min(cfg.prompts_per_generation, len(self.rows))
        rows = [self.rows[i] for i in round_prompt_indices(len(self.rows), n, r, cfg.shuffle_dataset, g)]
        self.judge.where = f"round {r + 1} (optimizer step {r * self.round_len + 1})"  # what a judge timeout names
        n_ref = cfg.refresh_reference_every
        if self.ref is not None and n_ref > 1 and r > 0 and r % n_ref == 0:
            refresh_reference(self.ref, self.policy)
            self.refreshes += 1
        elif n_ref == 1 and r > 0 and self.needs_ref:
            # the round-start policy is this round's reference (its log-probs, no copy kept): a refresh all the same
            # (summary.json reference_refreshes counted none for iterative_dpo, sppo, gpo, upo)
            self.refreshes += 1
        if self.spec.scores == "mcts":
            from preflab.online.mcts import mcts_round

            return mcts_round(self, r, rows, g)
        trees = None
        if cfg.trainer == "tpo" and cfg.tpo_tree_depth > 1:  # TPO's multi-level preference tree: b^D leaves a prompt
            from preflab.online.tpo_tree_round import tree_round

            if type(self)._generate is not OnlineRun._generate:
                raise ConfigError(f"tpo_tree_depth > 1 grows trees from token prompts; {type(self).__name__} generates "
                                  "from other inputs (images). Use tpo_tree_depth: 1.")
            ids, trees = tree_round(self, rows, self._round_seed(r))
            K = len(ids) // n
        else:
            if self.environments is not None:  # fresh instances, reset; the rows with their reset observations
                rows = self._start_environments(rows, K, r)
            ids = self._generate(rows, K, self._round_seed(r))
        # every rank runs the round's user code (reward functions, verifiers, judges, a pair builder) on the whole
        # round; a failure on one rank alone is agreed on before any rank goes on (round_agreement)
        with self._round_agreement(r):
            judged = self._judge_and_build(r, rows, ids, K, g, trees)
        examples, texts, flat, per_fn, has_eos = judged.examples, judged.texts, judged.flat, judged.per_fn, \
            judged.has_eos
        dropped, scores, completions, loss_masks, counts = judged.dropped, judged.scores, judged.completions, \
            judged.loss_masks, judged.counts
        order = torch.randperm(len(examples), generator=g).tolist()
        spg = cfg.steps_per_generation
        slices = [order[len(order) * i // spg:len(order) * (i + 1) // spg] for i in range(spg)]
        if 0 < len(order) < spg and self.main and not getattr(self, "_said_short_round", False):
            self._said_short_round = True  # once per run; every empty step is counted in online.empty_steps
            print(f"preflab: note: round {r + 1} gave {len(order)} training examples for steps_per_generation={spg} "
                  f"steps: {spg - len(order)} of its steps get none and are zero-gradient (counted in summary.json "
                  "online.empty_steps). Lower steps_per_generation or raise prompts_per_generation.", flush=True)
        valid_scores = flat[~flat.isnan()]
        empty = sum(1 for t, c in zip(texts, ids) if not c or t in ("", []) or
                    (isinstance(t, list) and not any(m.get("content") or m.get("tool_calls") for m in t)))
        # with tool results in the completions, TRL counts the tokens the model wrote (its tool_mask's 1s)
        lengths = torch.tensor([sum(m) for m in loss_masks] if loss_masks else [len(c) for c in ids],
                               dtype=torch.float64)
        metrics = {"reward": float(valid_scores.mean()) if len(valid_scores) else math.nan,
                   "reward_std": float(valid_scores.std()) if len(valid_scores) > 1 else 0.0,
                   **length_metrics(lengths, has_eos),
                   "completions/clipped_ratio": float(1 - sum(has_eos) / len(ids)),
                   "completions/empty": float(empty), "judge/dropped": float(dropped),
                   "examples/count": float(len(examples)), "round": float(r + 1), **counts,
                   **({"val/contain_eos_token": sum(has_eos) / len(ids)} if cfg.trainer in TRL_ONLINE_DPO else {}),
                   **getattr(self.generator, "last_metrics", {})}
        for k, name in enumerate(self.judge.names):
            values = per_fn[:, k][~per_fn[:, k].isnan()]
            metrics[f"rewards/{name}/mean"] = float(values.mean()) if len(values) else math.nan
            metrics[f"rewards/{name}/std"] = float(values.std()) if len(values) > 1 else 0.0  # as reward_std
        if len(self.judge.names) > 1:
            self._count_not_applicable(r, per_fn, flat)
        truncated = len(ids) - sum(has_eos)
        self.counts["truncated_completions"] = self.counts.get("truncated_completions", 0) + truncated
        if truncated * 2 >= len(ids) and self.main and not getattr(self, "_said_truncated", False):
            self._said_truncated = True  # once per run; completions/clipped_ratio logs every round's share
            print(f"preflab: note: round {r + 1}: {truncated} of {len(ids)} completions reached max_completion_length="
                  f"{cfg.max_completion_length} without EOS, so the judges scored cut-off text "
                  "(completions/clipped_ratio; summary.json online.truncated_completions). Raise max_completion_length"
                  ", or set missing_eos_penalty to score them lower.", flush=True)
        self.counts["rounds"] += 1
        if self.tools:  # summary.json online.tool_calls / tool_failures / tool_timeouts: the run's totals
            for key in ("calls", "failures", "timeouts"):
                self.counts[f"tool_{key}"] = self.counts.get(f"tool_{key}", 0) + int(metrics[f"tools/{key}"])
        for key in ("accepted", "scanned") if "rso/scanned" in metrics else ():  # the run's RSO totals
            self.counts[f"rso_{key}"] = self.counts.get(f"rso_{key}", 0) + int(metrics[f"rso/{key}"])
        self.counts["empty_completions"] += empty
        self.counts["judge_dropped"] += dropped
        self.counts["completions"] += len(ids)
        if self.main:
            with self.main_writes():  # a failure stops every rank at the step's end (TrainingRun.main_writes)
                self._write_round_file(r, rows, completions, texts, scores)
        return Round(r, examples, slices, metrics)

    def _round_agreement(self, r: int):
        """Where round r's judging and example building run, on several processes: every rank judges the whole round
        itself (reward functions, verifiers, reward and preference models, a user's pair builder, UPO's dropout
        passes), so one of them can fail on one rank alone (a reward function that fails on the main process only,
        past max_judge_failure_fraction; a pair builder that raises on rank 1). That rank raised alone and the others
        waited in the step's first collective until the launcher or the collective's timeout killed them, saying
        nothing. preflab.rank_agreement.ranks_agree after the block: one all-reduce of a failure flag per round (no
        collective of the round follows its judging, so none could carry it; ordinary steps add none), and every rank
        raises RankFailure naming each failed rank and its error. With environments the main process judges and sends
        its values or its failure (environments.judge_rollouts, main_result) and the group recipes they train build
        their examples without user code: no agreement. One process: the block's own error, unchanged."""
        if self.environments is not None:
            return nullcontext()
        return ranks_agree(f"round {r + 1}: judging the completions or building the examples failed")

    def _judge_and_build(self, r: int, rows, ids, K: int, g: torch.Generator, trees) -> JudgedRound:
        """Round r's completions `ids` (K per row of `rows`, group-major) judged (stopped above
        max_judge_failure_fraction), turned into the recipe's examples with their precomputed log-probs and, for the
        group recipes, advantages; g: the round's generator (pair sampling), trees: TPO's sample trees (or None)."""
        cfg, n = self.cfg, len(rows)
        prompts, texts, flat, per_fn, has_eos = self._judge_round(rows, ids, K)
        dropped, raised = int(flat.isnan().sum()), self.judge.last_raised
        if dropped > cfg.max_judge_failure_fraction * len(ids):
            raise PreflabError(
                f"round {r + 1}: {dropped} of {len(ids)} completions could not be scored (more than "
                f"max_judge_failure_fraction = {cfg.max_judge_failure_fraction}): {raised} because a judge raised, "
                f"{dropped - raised} because every judge returned None or NaN (not applicable) for them; judge/failed "
                f"counts exceptions ({self.judge.failed} so far).{self.judge.failure_note()} Fix the judge (a reward "
                "function returns one number per completion), or raise max_judge_failure_fraction to train on the "
                "scored ones.")
        if raised and self.main and not getattr(self, "_said_judge_raised", False):
            self._said_judge_raised = True  # once per run; every one is counted in judge/failed and judge/dropped
            print(f"preflab: note: round {r + 1}: a judge raised on {raised} of {len(ids)} completions; each is "
                  "dropped (not scored by the other judges alone), counted in judge/failed and judge/dropped."
                  f"{self.judge.failure_note()}", flush=True)
        scores = flat.view(n, K)
        completions = [[ids[p * K + k] for k in range(K)] for p in range(n)]

        def matrices(p: int, valid: list[int]) -> torch.Tensor:
            pref = [j for j, kind in zip(self.judge.judges, self.judge.kinds) if kind == "preference"]
            if pref:
                return torch.as_tensor(self.judge.win_rates(pref[0], prompts[p * K], [texts[p * K + k] for k in valid]),
                                       dtype=torch.float64)
            return preference_matrix(scores[p, valid], cfg.preference_temperature)

        def log_odds(p: int, valid: list[int]) -> torch.Tensor:  # gpo: log(P / (1 - P)) without the sigmoid
            pref = [j for j, kind in zip(self.judge.judges, self.judge.kinds) if kind == "preference"]
            if pref and hasattr(pref[0], "log_odds_matrix"):
                return torch.as_tensor(self.judge.win_rates(pref[0], prompts[p * K], [texts[p * K + k] for k in valid],
                                                            "log_odds_matrix"), dtype=torch.float64)
            if pref:
                return preference_log_odds(matrices(p, valid), rows[p].row_id)
            return reward_log_odds(scores[p, valid], cfg.preference_temperature, rows[p].row_id)

        per_judge = per_fn.view(n, K, -1)
        if getattr(self, "upo_estimator", None) is not None:  # UPO's MC-dropout passes stand in for the judges
            from preflab.online.upo import dropout_pass_rewards

            per_judge = dropout_pass_rewards(self.upo_estimator, prompts, texts, cfg.upo_passes,
                                             self._round_seed(r) + 1, self.judge.timed,
                                             scored=(~flat.isnan()).tolist()).view(n, K, -1)
        examples, counts = build_examples(self.spec, cfg, rows, completions, scores, matrices, g, per_judge, log_odds,
                                          self.judge.where)
        loss_masks = getattr(self.generator, "last_loss_masks", None)
        for p, e in enumerate(examples if loss_masks else []):  # groups: example p is prompt p
            e.loss_mask = loss_masks[p * K:(p + 1) * K]
        if cfg.mask_truncated_completions and self.spec.kind == "groups":
            mask_truncated(examples, self.tokenizer.eos_token_id)
        if trees is not None:
            from preflab.online.tpo_tree_round import mark_tree

            mark_tree(examples, trees)
        self._precompute(examples)  # (before the advantages: RLOO's reward reads the round's KL)
        if self.spec.kind == "groups" and examples:
            rewards = torch.tensor([e.extras["rewards"] for e in examples], dtype=torch.float64)
            valid = torch.tensor([e.extras.get("scored", e.extras["valid"]) for e in examples])
            adv = self._round_advantages(examples, rewards, valid, per_judge)
            for e, a in zip(examples, adv):
                e.extras["advantages"] = a.tolist()
            if not bool(adv.ne(0).any()):
                self._say_no_reward_signal(r, float(rewards[valid].mean()) if bool(valid.any()) else math.nan)
        return JudgedRound(texts, flat, per_fn, has_eos, dropped, scores, completions, examples, counts, loss_masks)

    def _judge_with_environments(self, prompts, texts, K: int, columns, ids):
        """The round's (scores, per-function rewards) with environments (environments.judge_rollouts: every rollout
        judged with its own instance; with several processes by the main process, once)."""
        from preflab.online.environments import judge_rollouts

        return judge_rollouts(self.judge, self.accelerator, prompts, texts, [i // K for i in range(len(ids))],
                              columns, ids, self.round_environments)

    def _count_not_applicable(self, r: int, per_fn: torch.Tensor, flat: torch.Tensor) -> None:
        """summary.json online.judge_not_applicable {judge: completions}: the scored completions each of several
        judges returned None or NaN for (the others' weighted sum stood in: TRL's "not applicable"); said once per
        judge when it applied to none of a round's scored completions (a verifier on rows without its column, a
        reward function returning None by mistake), which otherwise showed only as a null rewards/<judge>/mean."""
        missing = not_applicable_counts(per_fn, flat)
        scored = int((~flat.isnan()).sum())
        totals = self.counts.setdefault("judge_not_applicable", {})
        said = self.__dict__.setdefault("_said_not_applicable", set())
        for name, n in zip(self.judge.names, missing):
            totals[name] = totals.get(name, 0) + n
            if scored and n == scored and name not in said and self.main:
                said.add(name)
                print(f"preflab: note: round {r + 1}: judge '{name}' returned None or NaN for all {scored} scored "
                      "completions (not applicable, as TRL reads it), so their rewards are the other judges' weighted "
                      f"sum alone and rewards/{name}/mean is null. If it should score them, check the columns it reads "
                      "(the prompt rows' fields reach it as keywords) and what it returns; counted in summary.json "
                      "online.judge_not_applicable.", flush=True)

    def _start_environments(self, rows, K: int, r: int = 0) -> list:
        """environment_factory: K fresh instances per row (self.round_environments, one per completion; the main
        process's with several), reset with the row's fields, and the rows with their reset observations
        (environments.begin_rollouts); the generator's per-completion tools set to each instance's methods. A prompt
        cut to max_prompt_length by its observation is counted in summary.json online.environment_prompts_truncated
        and said once. Without a dataset (prompts_from_reset) round r's prompt p is reset under the global generators
        seeded with environments.reset_seed(round seed, p), and the prompts reset gave are counted in
        online.environment_reset_prompts; so are the rows without a prompt (self.no_prompt_rows: reset without the
        prompt keyword, its text their prompt; environments.default_prompts), the others reset unseeded."""
        from preflab.online.environments import begin_rollouts, reset_seed

        cfg = self.cfg
        place = self._row_place()
        absent = self.no_prompt_rows if not self.prompts_from_reset else frozenset()
        # the rows whose prompt is reset's text (every row without a dataset, else the rows without a prompt): reset
        # under a seed of their place in the round, and counted
        from_reset = [self.prompts_from_reset or row.row_id in absent for row in rows]
        seeds = None
        if any(from_reset):
            round_seed = self._round_seed(r)
            seeds = [reset_seed(round_seed, p) if made else None for p, made in enumerate(from_reset)]
        if self.prompts_from_reset:
            positions = {row.row_id: p for p, row in enumerate(rows)}
            place = lambda row_id: (f"round {r + 1}'s prompt {positions.get(row_id, row_id) + 1} of "  # noqa: E731
                                    f"{len(rows)} (no dataset: environment_factory's reset gives the prompt)")
        out, self.round_environments, slot_tools, cut = begin_rollouts(self.environments, rows, K, self.tokenizer,
                                                                       cfg, self.accelerator, place, seeds,
                                                                       self.prompts_from_reset, absent)
        if any(from_reset):
            self.counts["environment_reset_prompts"] = (self.counts.get("environment_reset_prompts", 0)
                                                        + sum(from_reset))
        if hasattr(self.generator, "slot_tools"):
            self.generator.slot_tools = slot_tools
        if cut:
            self.counts["environment_prompts_truncated"] = self.counts.get("environment_prompts_truncated", 0) + cut
            if self.main and not getattr(self, "_said_env_cut", False):
                self._said_env_cut = True
                print(f"preflab: note: {cut} prompt(s) with their environment's reset observation are longer than "
                      f"max_prompt_length={cfg.max_prompt_length} and were cut (counted in summary.json "
                      "online.environment_prompts_truncated).", flush=True)
        refuse_past_positions(out, self.policy, cfg.max_completion_length, "the prompts with their reset observations")
        return out

    def _round_advantages(self, examples: list[Example], rewards: torch.Tensor, scored: torch.Tensor,
                          per_judge: torch.Tensor | None) -> torch.Tensor:
        """[P, K] advantages of the whole round, as TRL computes them over its generation batch: GRPO's group
        normalisation (with multi_objective_aggregation normalize_then_sum, each judge's rewards `per_judge`
        [P, K, J] normalised in their group first: normalize_then_sum_advantages), or RLOO's leave-one-out baseline of
        the rewards clipped to reward_clip_range, less beta x each completion's summed KL of the round-start policy to
        the reference (preflab.objectives.rloo)."""
        cfg = self.cfg
        if cfg.multi_objective_aggregation == "normalize_then_sum":  # groups: example p is prompt p
            return normalize_then_sum_advantages(per_judge.to(torch.float64), torch.tensor(self.judge.weights,
                                                 dtype=torch.float64), scored)
        if self.spec.advantages != "leave_one_out":
            return group_advantages(rewards, scored, cfg.scale_rewards)[0]
        from preflab.objectives.rloo import rloo_advantages, shaped_rewards

        kl = sequence_kl(examples) if self.needs_ref else None
        shaped = shaped_rewards(rewards, scored, kl, cfg.beta if self.needs_ref else 0.0, cfg.reward_clip_range)
        return rloo_advantages(shaped, cfg.normalize_advantages)

    def _write_round_file(self, r, rows, completions, texts, scores) -> None:
        K = len(completions[0]) if completions else self.cfg.num_generations  # tpo trees: b^D leaves
        path = self.out / "rounds" / f"{r + 1}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as fh:
            for p, row in enumerate(rows):
                fh.write(json.dumps({"prompt": row.prompt, "completions": texts[p * K:(p + 1) * K],
                                     "scores": [None if math.isnan(s) else s for s in scores[p].tolist()],
                                     "round": r + 1}, default=str) + "\n")

    def _precompute(self, examples: list[Example]) -> None:
        """Reference and round-start policy token log-probs of every sequence the round's steps will score."""
        if not examples:
            return
        counts = [len(e.sequences()) for e in examples]

        def assign(values, attr):
            i = 0
            for e, n in zip(examples, counts):
                setattr(e, attr, values[i:i + n])
                i += n

        self.policy.eval()
        if self.needs_ref:
            assign(self._example_logps(self._reference_source(), examples), "ref")
        moved = self.round_len > 1
        if self.spec.kind == "groups" and (moved or (self.spec.advantages == "leave_one_out" and self.needs_ref)):
            assign(self._example_logps(self._policy_scores, examples), "prev")
        self.policy.train()

    # ------------------------------------------------------------------ the driver's hooks
    def micro_batches(self, step: int) -> list[OnlineMicroBatch]:
        r, s = divmod(step, self.round_len)
        if self.pending is None or self.pending.index != r:
            self.pending = self._new_round(r)
        acc, accum = self.accelerator, self.cfg.gradient_accumulation_steps
        world, rank = acc.num_processes, acc.process_index
        chosen = self.pending.slices[s % self.cfg.steps_per_generation]
        if not chosen:
            self.counts["empty_steps"] += 1
            if self.main and s == 0 and not self.pending.examples:
                self._say_empty_round(r)
            return [OnlineMicroBatch([], [-1], 0)]
        accum = self._micro_batches_per_step(len(chosen))
        parts_n = world * accum
        self.examples_trained += len(chosen)
        examples = [self.pending.examples[i] for i in chosen]
        tokens_per_prompt = sum(e.trained_tokens(k) for e in examples for k, ok in enumerate(e.extras.get(
            "valid", [True] * len(e.completions))) if ok) / len(examples)
        parts = [chosen[j::parts_n] for j in range(parts_n)]
        out = []
        for m in range(accum):
            exs = [self.pending.examples[i] for i in parts[m * world + rank]]
            if not exs:  # scored with weight 0: every rank reports the same metric names to the all-reduce
                out.append(OnlineMicroBatch(examples[:1], [], 0, tokens_per_prompt, zero=True))
                continue
            tokens = sum(len(e.prompt_ids) * len(e.sequences()) + sum(len(c) for c in e.sequences()) for e in exs)
            out.append(OnlineMicroBatch(exs, [e.row_id for e in exs], tokens, tokens_per_prompt))
        self._last_micro_batch = out[-1]  # its forward ends the step's window of the entropy bonus's coefficient
        return out

    def _router_coef(self, policy) -> float | None:
        """router_aux_loss_coef as TRL 1.16's GRPOTrainer resolves it for a mixture-of-experts policy, for the
        trainers TRL runs as its GRPOTrainer (ROUTER_LOSS_TRAINERS); None for a dense policy, a coefficient of 0 or
        another trainer (TRL's OnlineDPOTrainer adds no router loss; moe_aux_loss_note says so). The policy's
        training forward of each micro-batch then adds coef x the routers' load-balancing loss over its
        [prompt | completion] tokens (every prompt once per completion, as TRL's padded rows), logged as aux_loss
        (preflab.scoring.router_loss); the old-policy and reference forwards ask for none (nor does TRL's). The step
        averages the micro-batches' router losses weighted by their prompts (TRL: the plain mean over its micro-batches
        and processes, of equal size, where the two agree). trainer rloo adds it as TRL's RLOOTrainer does, the same
        way."""
        if self.cfg.trainer not in ROUTER_LOSS_TRAINERS:
            return None
        from preflab.models.moe import router_loss_coef, router_shape

        coef = router_loss_coef(policy, self.cfg.router_aux_loss_coef)
        if coef is not None:
            router_shape(policy)  # the experts' count and top-k are known: a ConfigError now, not at step 1
        if coef is not None and self.scorer_class is not LogProbScorer:
            raise ConfigError(f"the policy is a mixture-of-experts model and TRL 1.16's GRPOTrainer adds "
                              f"router_aux_loss_coef={coef:g} x its routers' load-balancing loss, which "
                              f"{self.scorer_class.__name__} does not compute; set router_aux_loss_coef: 0 to train "
                              "on the objective's loss alone.")
        return coef

    def _micro_batches_per_step(self, n: int) -> int:
        """Micro-batches per process for a step of n examples: gradient_accumulation_steps, or more when a process's
        share would exceed per_device_train_batch_size (a round's size is set by prompts_per_generation and the
        recipe, so the batch size bounds the micro-batch, as it bounds memory, instead of the step's size). The
        step's loss is normalised over all its examples, so the split does not change the update (bnpo, whose
        normaliser is the micro-batch's tokens, excepted: as in TRL)."""
        cfg, world = self.cfg, self.accelerator.num_processes
        need = math.ceil(math.ceil(n / world) / cfg.per_device_train_batch_size)
        if need > cfg.gradient_accumulation_steps and self._deepspeed_engine() is not None:
            raise PreflabError(
                f"a step of {n} examples needs {need} micro-batches of per_device_train_batch_size="
                f"{cfg.per_device_train_batch_size} per process, but DeepSpeed steps after each micro-batch; raise "
                "per_device_train_batch_size to the step's share of each process (prompts_per_generation / "
                "steps_per_generation / processes for one example per prompt).")
        return max(cfg.gradient_accumulation_steps, need)

    def forward(self, mb: OnlineMicroBatch):
        from preflab.objectives.base import ObjectiveOutput

        if not mb.examples:  # nothing for this micro-batch: zero gradient, through the wrapped module (DDP)
            zero = self.scorer(self._empty_layout().to(self.accelerator.device)).token_logps.sum() * 0.0
            # the round's metrics still reach metrics.jsonl (reward, examples/count 0, pairs/ties_dropped): every
            # rank takes the same empty step, so every rank reports the same names
            return ObjectiveOutput(zero, zero.reshape(1), self._round_metrics())
        out = self._forward_groups(mb) if self.spec.kind == "groups" else self._forward_pairs(mb)
        if mb.zero:
            out.losses, out.loss = out.losses[:0], out.loss * 0.0
        round_metrics = self._round_metrics()
        out.metrics.update(round_metrics)
        for key in round_metrics:  # the round's value replaces the objective's (GRPO's reward): a per-example mean
            out.metric_counts.pop(key, None)
        if "clip_ratio/region_mean" in out.metrics:
            out.metrics["clip_ratio"] = out.metrics["clip_ratio/region_mean"]
            if "clip_ratio/region_mean" in out.metric_counts:
                out.metric_counts["clip_ratio"] = out.metric_counts["clip_ratio/region_mean"]
        return out

    def _resolve_epoch_schedule(self) -> None:
        """TRL's eval_strategy / save_strategy: epoch: an epoch is one pass over the prompts (progress()'s epoch 1.0),
        round_len x #prompts / prompts per round steps. Before, eval_strategy epoch left eval_steps unset: the run
        evaluated at its end only. Refused when an epoch is not a whole number of steps (no step ends it)."""
        cfg = self.cfg
        if "epoch" not in (cfg.eval_strategy, cfg.save_strategy):
            return
        per_round = min(cfg.prompts_per_generation, len(self.rows))
        steps, rest = divmod(self.round_len * len(self.rows), per_round)
        if rest:
            which = " and ".join(f"{k}: epoch" for k in ("eval_strategy", "save_strategy") if getattr(cfg, k) == "epoch")
            raise ConfigError(f"{which}: an epoch of {len(self.rows)} prompts is {len(self.rows)}/{per_round} rounds "
                              f"of {per_round} prompts ({self.round_len} steps each), not a whole number of steps; "
                              "use eval_steps / save_steps, or a prompts_per_generation that divides the prompts.")
        from preflab.config import resolve_epoch_eval

        resolve_epoch_eval(cfg, steps, self.main)

    def progress(self, step: int) -> dict:
        """`epoch` as TRL logs it, prompts consumed / prompts in the dataset (a round samples
        min(prompts_per_generation, #prompts) prompts for its round_len steps), and `round`, the generation round of
        step `step` (1-based; the round's own metrics row would average it over a logging window)."""
        per_round = min(self.cfg.prompts_per_generation, len(self.rows))
        return {"epoch": step * per_round / (self.round_len * len(self.rows)), "round": math.ceil(step / self.round_len)}

    def _round_metrics(self) -> dict:
        return {k: v for k, v in (self.pending.metrics if self.pending else {}).items() if isinstance(v, (int, float))}

    def _check_heldout_prompts(self, task, policy, tokenizer) -> None:
        """online_task: dataset's held-out prompts (eval_dataset_name, or the eval_fraction held out), which every
        evaluation answers greedily: said in a data line, counted in summary.json data.eval_prompt_tokenize (prompts
        cut to max_prompt_length there too), and refused, as the training prompts are, when one needs more positions
        than the policy has (before: no word of them, cuts uncounted, and generation ran past the position table)."""
        cfg = self.cfg
        if cfg.online_task != "dataset" or not task.heldout or getattr(task, "rows", None) is not None:
            return
        report: dict = {}
        heldout = task.heldout
        if self.environments is not None:  # held-out rows without a prompt: TRL's empty user message (as training)
            from preflab.online.environments import default_prompts

            heldout = default_prompts(heldout)[0]
        held = prepare_prompts(heldout, tokenizer, cfg.max_prompt_length, report_to=report,
                               truncation_mode=cfg.truncation_mode, chat_template_kwargs=cfg.chat_template_kwargs,
                               tools=self._prompt_tools(held_out=True) or None)  # (an unknown environment: by its row)
        source = cfg.eval_dataset_name or f"{cfg.dataset_name}, held out by eval_fraction={cfg.eval_fraction:g}"
        refuse_past_positions(held, policy, cfg.max_completion_length, f"the eval prompts of {source}")
        tokenized = {**report["prompt_tokenize"], "source": source}
        self.data_report["eval_prompt_tokenize"] = tokenized
        if self.main:
            cut = tokenized.get("prompt_truncated", 0)
            how = (f"answered {cfg.num_generations_eval} times each, sampled as in training (num_generations_eval),"
                   if cfg.num_generations_eval else "answered greedily")
            how += " with the environments (as in training)" if self.environments is not None else \
                " with the tools (as in training)" if self.tools else ""
            print(f"preflab: data (eval): {len(held)} held-out prompts ({source}), {how} and judged at "
                  "every evaluation" + (f"; {cut} cut to max_prompt_length={cfg.max_prompt_length}" if cut else "")
                  + ".", flush=True)

    def _note_partial_last_round(self) -> None:
        """max_steps that is no multiple of the round length L = steps_per_generation x num_iterations ends the run
        k = max_steps mod L steps into its last round R = ceil(max_steps / L): that round is generated and judged in
        full, but only k of its L steps train (with num_iterations 1, L - k of its steps_per_generation slices of
        examples are never trained on). Said before the first round and kept in summary.json online.partial_last_round;
        the run still stops at max_steps (TRL's GRPO stops there too, without a word)."""
        L, steps = self.round_len, self.cfg.max_steps
        k = steps % L
        self.partial_last_round = None
        if not k:
            return
        rounds = -(-steps // L)
        self.partial_last_round = {"round": rounds, "steps_trained": k, "round_steps": L}
        if self.main:
            nearest = sorted({steps - k, steps - k + L} - {0})
            print(f"preflab: note: max_steps={steps} is not a multiple of the round length {L} (steps_per_generation="
                  f"{self.cfg.steps_per_generation} x num_iterations={self.cfg.num_iterations}): the last round "
                  f"({rounds}) is generated and judged in full but trains {k} of its {L} steps. Set max_steps to "
                  f"{' or '.join(map(str, nearest))} to train whole rounds; summary.json online.partial_last_round.",
                  flush=True)

    def _note_fewer_prompts_than_a_round(self) -> None:
        """A round draws min(prompts_per_generation, #prompts) prompts (_new_round): with fewer prompts than
        prompts_per_generation every round takes all of them, a smaller round than configured (TRL's GRPO would
        repeat prompts to fill its generation batch). Said, and the round's size kept in summary.json's data."""
        cfg, n = self.cfg, len(self.rows)
        if cfg.online_task == "game" or cfg.prompts_per_generation <= n:
            return
        self.data_report["prompts_per_round"] = n
        if self.main:
            print(f"preflab: note: prompts_per_generation={cfg.prompts_per_generation} is more than the {n} prompts "
                  f"of the data, so every round takes all {n} once ({n} x num_generations={cfg.num_generations} "
                  "completions), not prompts_per_generation. Add prompts or lower prompts_per_generation to "
                  f"{n} to silence this; summary.json data.prompts_per_round.", flush=True)

    def _say_no_reward_signal(self, r: int, reward: float) -> None:
        """Every group of round r got one reward for all its completions: its advantages are 0, so its steps train
        nothing but the KL term; said for the first such round (the run would end looking normal with loss 0) and
        counted in summary.json online.no_signal_rounds. reward NaN: no completion was scored at all (every one
        dropped by the judges, which max_judge_failure_fraction = 1 lets through), said as such."""
        self.counts["no_signal_rounds"] = self.counts.get("no_signal_rounds", 0) + 1
        if self.main and self.counts["no_signal_rounds"] == 1:
            what = (f"every prompt's {self.cfg.num_generations} completions got the same reward (mean {reward:.3g})"
                    if not math.isnan(reward) else "no completion was scored (the judges dropped every one: "
                    f"max_judge_failure_fraction = {self.cfg.max_judge_failure_fraction:g} let the round through)")
            print(f"preflab: note: round {r + 1}: {what}, so every advantage is 0 and the round's steps train "
                  f"{self._without_advantages()}. Rounds like this are counted in summary.json "
                  "online.no_signal_rounds; a judge that cannot tell this policy's completions apart gives no "
                  "signal (try more num_generations, a higher temperature or a denser reward).", flush=True)

    def _without_advantages(self) -> str:
        """What a group recipe's step trains when every advantage is 0: the GRPO family's KL term (beta > 0) and
        entropy bonus (entropy_coef > 0); RLOO has its KL in the reward, not in the loss, so nothing."""
        beta = float(self.cfg.beta or 0.0)
        coef = float(getattr(self.objective, "entropy_coef", 0.0) or 0.0)
        if self.spec.advantages == "leave_one_out":
            return "nothing (rloo's KL penalty is in the reward, not in the loss)"
        terms = ([f"the KL term (beta {beta:g})"] if beta > 0 else []) + (
            [f"the entropy bonus (entropy_coef {coef:g})"] if coef else [])
        return "nothing but " + " and ".join(terms) if terms else "nothing (beta 0: no KL term)"

    def _say_empty_round(self, r: int) -> None:
        """A round without examples trains nothing (zero-gradient steps); say so with the round's counts, as the
        run would otherwise end looking normal with loss 0."""
        m = self.pending.metrics
        print(f"preflab: note: round {r + 1} gave no training examples ({int(m.get('pairs/ties_dropped', 0))} tied "
              f"pairs dropped, {int(m.get('judge/dropped', 0))} completions dropped by the judge, reward_std "
              f"{m.get('reward_std', float('nan')):.3g}); its {self.round_len} step(s) are zero-gradient (counted in "
              "summary.json online.empty_steps). A judge that scores every completion of a prompt alike gives no "
              "pairs.", flush=True)

    def _forward_pairs(self, mb: OnlineMicroBatch):
        exs, device = mb.examples, self.accelerator.device
        layout = self._pair_layout(exs)
        prompts = {"prompt_sequences": len(exs)} if "prompt_logps" in self.objective.token_needs else {}
        if prompts:
            layout.prompt_plan(len(exs))  # the chosen prompts' tokens (orpo's NLL), planned on the host
        layout = layout.to(device)
        with self.accelerator.autocast():
            scores = self.scorer(layout, want_hidden=self.want_hidden, **prompts)
        mask = layout.response_mask
        ref = None
        if exs[0].ref is not None:
            ref = Scores(token_matrix(pair_side_values(exs, "ref"), mask), mask)
        extras = {k: torch.tensor([e.extras[k] for e in exs], dtype=torch.float64, device=device)
                  for k in exs[0].extras}
        if self.spec.online_kl:
            ol = self._rounded(online_layout(exs, self.pad_id)).to(device)
            with self.accelerator.autocast():
                online = self.scorer(ol)
            k = len(exs[0].online)
            extras["online_policy_logps"] = SequenceLogps(online.token_logps, online.mask).sum.view(len(exs), k)
            ref_online = [v for e in exs for v in e.ref[2:]]
            extras["online_ref_logps"] = sequence_logps(ref_online, online.mask).sum.view(len(exs), k)
        batch = split_pairs(scores, ref, extras)
        out = self.objective(batch)
        if ref is not None:
            pol = torch.cat([batch.policy_chosen.sum, batch.policy_rejected.sum]).detach().double()
            refs = torch.cat([batch.ref_chosen.sum, batch.ref_rejected.sum]).double()
            out.metrics["kl"] = (pol - refs).mean()
            if self.cfg.trainer in TRL_ONLINE_DPO and "score_chosen" in extras:
                out.metrics.update(online_dpo_metrics(pol, refs, extras, self.cfg.beta))
        if any(e.weight != 1 for e in exs):  # read on the host (the game's population weights): no device compare
            weights = torch.tensor([e.weight for e in exs], dtype=out.losses.dtype, device=out.losses.device)
            out.losses = out.losses * weights
            out.loss = out.losses.mean()
        return out

    def _forward_groups(self, mb: OnlineMicroBatch):
        exs, device = mb.examples, self.accelerator.device
        G = len(exs[0].completions)
        layout = self._group_layout(exs).to(device)
        router = {"want_router_loss": True} if self.router_coef is not None else {}
        # TRL's GRPO entropy (the policy's token-mean entropy over the completions), on logged steps only as the
        # DPO family's token metrics (preflab.loops.offline.Trainer.forward)
        if self._log_due(getattr(self, "step", 0) + 1) or "token_entropy" in self.objective.token_needs:
            router["want_token_stats"] = True
        with self.accelerator.autocast():
            scores = self.scorer(layout, want_hidden=self.want_hidden, **router)
        shape = (len(exs), G, scores.token_logps.shape[-1])
        mask = scores.mask.view(shape)
        if exs[0].loss_mask is not None:  # tool observations: conditioned on, not trained on
            mask = mask & token_matrix(flat_masks(exs), scores.mask).bool().view(shape)
        policy = SequenceLogps(scores.token_logps.view(shape), mask)
        flat = lambda attr: [v for e in exs for v in getattr(e, attr)]  # noqa: E731
        ref = None
        if exs[0].ref is not None:
            ref = SequenceLogps(token_matrix(flat("ref"), scores.mask).view(shape), mask)
        extras = {"advantages": torch.tensor([e.extras["advantages"] for e in exs], device=device),
                  "tokens_per_prompt": torch.tensor(mb.tokens_per_prompt, device=device)}
        if "scored" in exs[0].extras:  # the GRPO family: unscored completions are in the loss with advantage 0
            extras["scored"] = torch.tensor([e.extras["scored"] for e in exs], device=device)
        if exs[0].prev is not None:
            extras["old_logps"] = token_matrix(flat("prev"), scores.mask).view(shape)
        if "step_index" in self.objective.required_extras and "steps" in exs[0].extras:  # tpo: a multi-level tree
            from preflab.online.tpo_tree_round import tree_step_index

            extras["step_index"] = token_matrix(tree_step_index(exs), scores.mask).long().view(shape) * mask
        elif "step_index" in self.objective.required_extras:  # tpo: a one-level tree, every response token is step 1
            extras["step_index"] = mask.long()
        if self.want_hidden:
            extras["hidden"] = scores.hidden.view(*shape, -1)
        if "token_entropy_grad" in self.objective.token_needs:  # entropy bonus: a second head pass, with gradient
            from preflab.scoring.lm import token_entropy

            with self.accelerator.autocast():
                head = backbone_and_head(unwrap(self.policy))[1].tempered(self.score_temperature)
                extras["token_entropy"] = token_entropy(scores, layout, head,
                                                        self.cfg.chunk_tokens).view(shape)
            extras["entropy_coef"] = self.entropy_control.applied()
        elif "token_entropy" in self.objective.token_needs:  # top_entropy_quantile: the mask's entropies (no grad)
            extras["token_entropy"] = scores.token_stats[..., 1].view(shape)
        if "token_entropy" in extras:
            if self.accelerator.num_processes > 1 and self.objective.top_entropy_quantile < 1:
                extras["entropy_threshold"] = self._entropy_threshold(extras["token_entropy"].detach(), mask, mb.zero)
        rewards = torch.tensor([e.extras["rewards"] for e in exs], device=device, dtype=torch.float32)
        valid = torch.tensor([e.extras["valid"] for e in exs], device=device)
        out = self.objective(ListBatch(policy, rewards, ref, valid, extras))
        if self.router_coef is not None:  # TRL's GRPOTrainer: + coef x aux_loss of each micro-batch's forward
            from preflab.scoring.router_loss import add_router_loss

            out = add_router_loss(out, scores.router_loss, self.router_coef)
        if self.entropy_control is not None:
            self._track_entropy(out, mb)
        if scores.token_stats is not None:  # on the device, token-weighted over the step: no host read
            tokens = mask.reshape(scores.mask.shape)
            count = tokens.sum().to(torch.float32)  # float32 (not 64: MPS); the step widens the sums it adds
            entropy = (scores.token_stats[..., 1].float() * tokens).sum()
            out.metrics["entropy"] = entropy / count.clamp_min(1.0)
            out.metric_counts["entropy"] = count
        return out

    def _track_entropy(self, out, mb) -> None:
        """The entropy bonus's coefficient: this micro-batch's bonus entropy joins the step's window (not a
        micro-batch scored with weight 0); the step's last micro-batch moves the coefficient (adaptive), after a
        sum over processes; `entropy_coef` is logged (the coefficient in force at this step)."""
        control = self.entropy_control
        if not mb.zero:
            control.add(out.metrics["entropy_bonus/entropy"], out.metric_counts["entropy_bonus/entropy"])
        out.metrics["entropy_coef"] = control.coef  # a Python number: summed on the host (preflab.step)
        if mb is getattr(self, "_last_micro_batch", None):
            control.end_step(lambda t: self.accelerator.reduce(t, reduction="sum"))

    def _entropy_threshold(self, entropy: torch.Tensor, mask: torch.Tensor, zero: bool) -> torch.Tensor:
        """The top_entropy_quantile cut over the trained tokens of this micro-batch on every process (TRL 1.16's
        get_high_entropy_mask gathers them: padded to one length with a negative sentinel, which no entropy equals);
        +inf (no token kept) when there are none. A micro-batch scored with weight 0 (mb.zero) adds no tokens."""
        acc, sentinel = self.accelerator, -1e9
        local = entropy[mask].float() if not zero else entropy.new_zeros(0, dtype=torch.float32)
        gathered = acc.gather(acc.pad_across_processes(local, dim=0, pad_index=sentinel))
        gathered = gathered[gathered != sentinel]
        if gathered.numel() == 0:
            return torch.tensor(math.inf, device=entropy.device)
        return torch.quantile(gathered, 1 - self.objective.top_entropy_quantile)

    def evaluate(self) -> dict:
        if self.task.evaluate is None:
            return {}
        after = self._evaluate_task()
        self.after = after
        if "reward" in after:  # online_task: dataset: the judges' reward of greedy answers to held-out prompts
            metrics = {"eval_reward": after["reward"]}
            # what the mean leaves out or scores unfinished: held-out prompts no judge scored, answers cut
            for key, name in (("unscored", "eval_judge/dropped"), ("judge_failed", "eval_judge/failed"),
                              ("clipped_ratio", "eval_completions/clipped_ratio")):
                if key in after:
                    metrics[name] = after[key]
            # with tools: the loop's metrics on the held-out answers, named as training's (eval_tools/call_frequency)
            metrics.update({f"eval_{k}": v for k, v in after.get("tools", {}).items()})
            if self.before and "per_prompt" in self.before:
                metrics["eval_win_rate_vs_reference"] = win_rate(after["per_prompt"], self.before["per_prompt"])
            return metrics
        if "true_reward" not in after:
            return {f"eval_{k}": after[k] for k in ("tv_to_equilibrium", "duality_gap") if k in after}
        metrics = {"eval_true_reward": after["true_reward"]}
        if "per_prompt" in after and self.before and "per_prompt" in self.before:
            metrics["eval_win_rate_vs_reference"] = win_rate(after["per_prompt"], self.before["per_prompt"])
        return metrics

    def training_examples(self) -> list | None:
        return self.rows  # the prompts the rounds draw from (token ids)

    def summary_extras(self) -> dict:
        extras = {"train_examples_seen": self.examples_trained,  # a round's size, not plan.global_batch, sets it
                  "trainer": self.cfg.trainer, "online_task": self.cfg.online_task, "online": dict(self.counts),
                  "judge": self.judge.stats(), "reference_refreshes": self.refreshes}
        if getattr(self, "partial_last_round", None):
            extras["online"]["partial_last_round"] = dict(self.partial_last_round)
        if self.tools and self.main:
            from preflab.report.data_notes import tool_use_note

            said = tool_use_note(self.counts)
            if said:
                print(f"preflab: note: {said}.", flush=True)
        quiet = self.counts.get("no_signal_rounds", 0)
        if quiet and self.main:
            print(f"preflab: note: {quiet} of {self.counts['rounds']} generation rounds gave every completion of a "
                  "prompt the same reward (no advantage, no reward signal); summary.json online.no_signal_rounds.",
                  flush=True)
        if self.before is not None:
            after = getattr(self, "after", None) or self._evaluate_task()
            if "true_reward" in after:
                extras.update({"true_reward_before": self.before["true_reward"],
                               "true_reward_after": after["true_reward"], "examples_after": after.get("examples", [])})
            if "reward" in after:  # online_task: dataset with an eval set (the judges' reward, not a true one)
                extras.update({"eval_reward_before": self.before["reward"], "eval_reward_after": after["reward"],
                               "examples_after": after.get("examples", [])})
                if "judge_failed" in after:  # held-out answers a judge raised on (left out of the rewards above)
                    extras.update({"eval_judge_failed_before": self.before.get("judge_failed", 0),
                                   "eval_judge_failed_after": after["judge_failed"]})
                if "tools" in after:  # with tools: the held-out answers' tool metrics before and after training
                    extras.update({"eval_tools_before": self.before["tools"], "eval_tools_after": after["tools"]})
            if "per_prompt" in after:
                extras["win_rate_vs_reference"] = win_rate(after["per_prompt"], self.before["per_prompt"])
                extras["win_rate_vs_reference_ties"], extras["win_rate_vs_reference_prompts"] = tied_prompts(
                    after["per_prompt"], self.before["per_prompt"])
            for key in ("tv_to_equilibrium", "duality_gap"):  # the game: the starting policy's (pi_0 = pi_ref, its
                if key in after:  # evaluation when the run was built) and the final policy's, for the headline
                    extras.update({f"{key}_before": self.before[key], f"{key}_after": after[key]})
            for key in ("policy_distribution", "reference_distribution", "equilibrium", "tv_to_equilibrium",
                        "duality_gap", "policy_distribution_average", "tv_to_equilibrium_average",
                        "duality_gap_average"):
                if key in after:
                    extras[key] = after[key]
        return extras

    def _finish(self, summary: dict) -> None:
        if self.cfg.online_task == "game" and "duality_gap" in summary:
            from preflab.online.game import final_row

            summary["final_metrics"].update(final_row(summary))  # the final policy's, not the last round start's
        super()._finish(summary)

    def write_card(self, summary: dict) -> None:
        from preflab.runlog import write_model_card

        write_model_card(self.out, self.cfg, summary)

    def write_model(self) -> None:
        model = self.accelerator.unwrap_model(self.policy)
        with original_dropout_config(model):  # config.json keeps the rates disable_dropout zeroed for training
            model.save_pretrained(self.out, safe_serialization=True)
        if hasattr(self.tokenizer, "save_pretrained"):
            self.tokenizer.save_pretrained(self.out)

    # ------------------------------------------------------------------ checkpoint: online state beside the driver's
    def _state_dir(self, step: int) -> Path:
        return self.out / "online-state" / f"step-{step}"

    def beside_checkpoint(self, step: int) -> dict:
        """The online state (main process), written before the driver's checkpoint (TrainingRun.beside_checkpoint:
        after the save's collectives, or agreed before a sharded save): before, it was written ahead of the ranks'
        RNG gathering, so a failed write left the main process in the save's agreement and the others in the
        gathering."""
        self._write_online_state(step)
        # sealed by the checkpoint: its trainer_state.json (itself in the COMPLETE marker) records each file
        return {"online_state": file_records(self._state_dir(step))}

    def _save(self, step: int, state: dict) -> Path | None:
        """The driver's checkpoint with the online state beside it (beside_checkpoint; every rank takes part:
        sharded checkpoints are collective); online states without a checkpoint, and those a killed save left half
        written, are pruned."""
        path = super()._save(step, state)
        if self.main:
            kept = {p.name.split("-", 1)[1] for p in self.out.glob("checkpoint-*")}
            for old in (self.out / "online-state").glob("step-*"):
                if old.name.split("-", 1)[1] not in kept:
                    shutil.rmtree(old, ignore_errors=True)
            for stale in (self.out / "online-state").glob(".tmp-step-*"):  # left by a save killed while writing
                shutil.rmtree(stale, ignore_errors=True)
        return path

    def _write_online_state(self, step: int) -> None:
        final = self._state_dir(step)
        tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}")
        try:
            self._write_online_state_to(tmp, final)
        except OSError as err:  # a full disk, a read-only folder: as a failed checkpoint save says it
            shutil.rmtree(tmp, ignore_errors=True)
            raise WriteFailed(
                f"could not write the online state {final} of checkpoint-{step}: {err.strerror or err}. Earlier "
                "checkpoints are kept; free disk space or fix the permissions of output_dir, then resume.") from err

    def _write_online_state_to(self, tmp: Path, final: Path) -> None:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        (tmp / "round.json").write_text(json.dumps(self.pending.to_json() if self.pending else None))
        (tmp / "judge.json").write_text(json.dumps({"judge": self.judge.state(), "counts": self.counts,
                                                    "refreshes": self.refreshes, **({"entropy_control":
                                                    self.entropy_control.state()} if self.entropy_control else {})}))
        if getattr(self.task, "state", None) is not None:
            (tmp / "task.json").write_text(json.dumps(self.task.state.state_dict()))
        if self.ref is not None and self.refreshes:
            from safetensors.torch import save_file

            save_file({k: v.contiguous().cpu() for k, v in self.ref.state_dict().items()}, str(tmp / "reference.safetensors"))
        for file in tmp.iterdir():  # on disk before the checkpoint that records their sha256
            fsync_file(file)
        fsync_dir(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)

    def _verify_for_resume(self, path: Path) -> None:
        """The driver's check of the checkpoint's files, then of its online state (online-state/step-N beside it)
        against the sizes and sha256 its trainer_state.json records: PreflabError naming a missing or changed file
        (`resume_from_checkpoint: true` then falls back to the previous checkpoint)."""
        super()._verify_for_resume(path)
        try:
            saved = json.loads((Path(path) / "trainer_state.json").read_text())
        except (OSError, ValueError):
            return  # the resume itself reports it
        records = saved.get("online_state") if isinstance(saved, dict) else None
        if not isinstance(records, dict):
            return  # written before online states were sealed: _maybe_resume checks what it needs
        folder = Path(path).parent / "online-state" / f"step-{saved.get('global_step')}"
        problems = check_files(folder, sorted(records), records)
        if problems:
            raise PreflabError(next(iter(problems.values())).replace(
                f"checkpoint {folder} is damaged", f"the online state of checkpoint {path} is damaged"))

    def _maybe_resume(self) -> int:
        step = super()._maybe_resume()
        if not step:
            return step
        # the online state lives beside the checkpoint, in its run folder (which may be another output_dir)
        folder = Path(self.resumed_from).parent / "online-state" / f"step-{step}"
        if not (folder / "judge.json").exists():
            raise PreflabError(f"resuming at step {step}: {folder} (the online run's state, written beside "
                               f"{Path(self.resumed_from).name} by the online run that wrote it) is missing; resume "
                               "from a checkpoint of an online run, in its run folder with its online-state/.")
        saved = json.loads((folder / "round.json").read_text())
        self.pending = Round.from_json(saved) if saved else None
        meta = json.loads((folder / "judge.json").read_text())
        self.judge.load_state(meta["judge"])
        self.counts, self.refreshes = meta["counts"], meta["refreshes"]
        if self.entropy_control is not None and "entropy_control" in meta:
            self.entropy_control.load_state(meta["entropy_control"])
        if getattr(self.task, "state", None) is not None:
            if not (folder / "task.json").exists():
                raise PreflabError(f"resuming at step {step}: {folder / 'task.json'} (the task's state: OTC's tracker, "
                                   "the preference game's average-iterate sum) is missing: the checkpoint was written "
                                   "by a run of another task, or by a preflab from before this task kept state (game "
                                   "checkpoints before the average iterate). Resume from a checkpoint written by a "
                                   "run of this task with this preflab, or start the run again.")
            self.task.state.load_state_dict(json.loads((folder / "task.json").read_text()))
        if (folder / "reference.safetensors").exists():
            from safetensors.torch import load_file

            self.ref.load_state_dict(load_file(str(folder / "reference.safetensors")))
        return step


def scoring_temperature(cfg) -> float:
    """The temperature T whose tempered distribution softmax(z / T) the run's log-probs and entropies are of: the
    sampling `temperature` for the trainers of TRL 1.16's GRPOTrainer and RLOOTrainer (TEMPERATURE_SCORED), which
    build their fused LM head with it for the policy, the round-start (old) policy and the reference alike, so the
    ratios, the KL, the entropies (metric, top_entropy_quantile, entropy bonus) are all of the tempered
    distribution; 1 for every other recipe (TRL's OnlineDPOTrainer scores log_softmax(logits) untempered)."""
    return float(cfg.temperature) if cfg.trainer in TEMPERATURE_SCORED else 1.0


def check_gpo_judges(spec, cfg, judge: Judge) -> None:
    """gpo regresses on the log-odds log(P / (1 - P)) of a prompt's completion pairs. Without a preference model
    among the judges P comes from the rewards: 1[r_i > r_j] (1/2 ties) at preference_temperature 0, whose log-odds
    are infinite for every pair that is not a tie, so the run would stop at the first round with a distinct pair,
    after that round's generation and judging (trainers.check_log_odds); refused here, before any generation."""
    if spec.scores != "centred" or cfg.preference_temperature > 0 or "preference" in judge.kinds:
        return
    raise ConfigError(f"trainer {cfg.trainer} with reward judges only ({', '.join(judge.names)}) and "
                      "preference_temperature 0 gives hard preferences P = 1[r_i > r_j], whose log-odds GPO regresses "
                      "on are infinite for every pair that is not a tie. Set preference_temperature > 0 (P = "
                      "sigmoid((r_i - r_j) / t); examples/online/gpo.yaml uses 0.5) or judge with a preference model "
                      "(e.g. a GPM directory).")


TRL_ONLINE_DPO = ("online_dpo", "iterative_dpo")  # the recipes TRL's OnlineDPOTrainer runs (its metric names too)


def online_dpo_metrics(pol: torch.Tensor, refs: torch.Tensor, extras: dict, beta: float) -> dict:
    """TRL OnlineDPOTrainer's `objective/*` keys (trl/experimental/online_dpo/online_dpo_trainer.py) over the 2B
    trained completions [chosen; rejected]: pol / refs their summed policy / reference log-probs, extras'
    score_chosen / score_rejected the judge's scores. kl = S - S_ref per completion; non_score_reward = -beta kl;
    rlhf_reward = score + non_score_reward; entropy = -S (TRL's estimate); scores_margin = score_chosen -
    score_rejected per pair; each a mean (beta as logged by TRL)."""
    kl = pol - refs
    scores = torch.cat([extras["score_chosen"], extras["score_rejected"]]).to(kl)
    non_score = -beta * kl
    return {"objective/kl": kl.mean(), "objective/entropy": -pol.mean(), "objective/non_score_reward": non_score.mean(),
            "objective/rlhf_reward": (scores + non_score).mean(), "objective/scores": scores.mean(),
            "objective/scores_margin": (extras["score_chosen"] - extras["score_rejected"]).mean().to(kl),
            "beta": torch.tensor(float(beta), dtype=kl.dtype, device=kl.device)}


def mask_truncated(examples: list[Example], eos: int) -> None:
    """TRL GRPOConfig's mask_truncated_completions (DAPO's overlong filtering, Yu et al. 2025, arXiv:2503.14476):
    a completion that does not end with eos keeps its reward in its group's advantages but none of its tokens in
    the loss (nor in dapo's token count): its loss_mask is all 0."""
    for e in examples:
        masks = e.loss_mask or [[1] * len(c) for c in e.completions]
        e.loss_mask = [m if c and c[-1] == eos else [0] * len(c) for m, c in zip(masks, e.completions)]


def sequence_kl(examples: list[Example]) -> torch.Tensor:
    """[P, K] sum over each completion's trained tokens of log pi_old(y_t) - log pi_ref(y_t) (the round-start policy's
    and the reference's token log-probs kept with the example, `prev` and `ref`): the KL estimate RLOO subtracts
    from the reward (TRL 1.16 RLOOTrainer: the first-order log ratio, summed over the completion mask)."""
    out = []
    for e in examples:
        masks = e.loss_mask or [[1] * len(c) for c in e.completions]
        out.append([sum((p - q) * w for p, q, w in zip(e.prev[k], e.ref[k], masks[k]))
                    for k in range(len(e.completions))])
    return torch.tensor(out, dtype=torch.float64)


def flat_masks(examples: list[Example]) -> list[list[int]]:
    return [m for e in examples for m in e.loss_mask]


def win_rate(after: list[float], before: list[float]) -> float:
    """P(policy's answer scores higher than the reference's on the same prompt), ties counted 1/2; a prompt either
    answer of which the judge could not score (NaN) is left out (NaN when none is left)."""
    wins = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in _scored_pairs(after, before)]
    return sum(wins) / len(wins) if wins else math.nan


def tied_prompts(after: list[float], before: list[float]) -> tuple[int, int]:
    """(prompts whose two answers the judge scored equal, prompts win_rate counts): the ties win_rate counts 1/2
    each, said beside it (summary.json win_rate_vs_reference_ties / _prompts; `preflab train`'s last line and
    `preflab report`'s headline)."""
    scored = _scored_pairs(after, before)
    return sum(a == b for a, b in scored), len(scored)


def _scored_pairs(after: list[float], before: list[float]) -> list[tuple[float, float]]:
    """The prompts' (after, before) scores where the judge scored both answers (no NaN): what win_rate and
    tied_prompts count."""
    return [(a, b) for a, b in zip(after, before) if not (math.isnan(a) or math.isnan(b))]


def length_metrics(lengths: torch.Tensor, has_eos: list[bool]) -> dict[str, float]:
    """TRL 1.16 GRPOTrainer's completion-length statistics of a round (lengths count the eos token): mean / min /
    max over all completions, and over the completions that ended with eos (`terminated`; 0 when none did, as TRL)."""
    terminated = lengths[torch.tensor(has_eos, dtype=torch.bool)]
    if not len(terminated):
        terminated = lengths.new_zeros(1)
    return {"completions/mean_length": float(lengths.mean()), "completions/min_length": float(lengths.min()),
            "completions/max_length": float(lengths.max()),
            "completions/mean_terminated_length": float(terminated.mean()),
            "completions/min_terminated_length": float(terminated.min()),
            "completions/max_terminated_length": float(terminated.max())}
