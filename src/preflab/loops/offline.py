"""Offline preference training: dataset -> micro-batches -> scores -> objective -> the shared step.

    trainer = Trainer(load_config("examples/quickstart.yaml"))
    summary = trainer.train()      # writes metrics.jsonl, checkpoints, the final model and summary.json

accelerate owns processes, devices and mixed precision; the scorer (not the raw LM) is what DDP wraps, so one
forward returns response log-probs. The trainer never names an objective: it reads the objective's declared needs.
"""
from __future__ import annotations

import time
from functools import cached_property
from pathlib import Path

import torch

from preflab.config import TrainConfig
from preflab.data.layout import bucket
from preflab.models.attention import effective_layout, flex_training_refused
from preflab.models.dropout import original_dropout_config
from preflab.models.adapters import is_lora
from preflab.errors import ConfigError, PreflabError
from preflab.loops.batches import MicroBatch, make_plan
from preflab.loops.driver import TrainingRun
from preflab.loops.engine_extras import ScorerWithExtras, extra_modules
from preflab.loops.extras_producer import (make_producer, produced_extras, refuse_produced_columns,
                                          refuse_sharded_engine)
from preflab.loops.kinds import kind_for
from preflab.loops.launch import is_sharded, make_accelerator
from preflab.loops.optimizer import make_optimizer
from preflab.loops.ref_sync import (check_ref_sync, install_ref_sync, present_in_checkpoint, reference_tensors,
                                    sync_reference_of)
from preflab.objectives.base import (PairBatch, UnpairedBatch, check_gradient_extras, check_modality,
                                     statistic_over_processes_parts)
from preflab.runlog import write_model_card
from preflab.scoring.compile import before_compiled_call, compile_scorer, graphs_compiled
from preflab.models.segment_attention import set_attention_mode
from preflab.scoring.lm import LogProbScorer, backbone_and_head
from preflab.scoring.token_metrics import counts, ratios
from preflab.sharding_options import fsdp2_token_kl_problem


def shard_reference(accelerator, ref_scorer):
    """Under FSDP2 the frozen reference is sharded the same way as the policy (accelerate's fsdp2_prepare_model:
    fully_shard per decoder layer + the root, on the same mesh): each rank holds 1/world of its weights, gathered
    layer by layer during its forward. It has no gradients (requires_grad False, scored under no_grad) and is not
    in the optimizer. FSDP2 keeps a root module's parameters gathered after its forward (for the backward that
    follows); the reference has no backward, so they are resharded after each forward too."""
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model

    ref_scorer = fsdp2_prepare_model(accelerator, ref_scorer)
    ref_scorer.register_forward_hook(lambda module, args, output: module.reshard())
    return ref_scorer


# the Python entry point of each task the offline Trainer does not run (`preflab train` routes them: loops/cli.py)
OTHER_RUNNERS = {"online": "preflab.online.run.OnlineRun(cfg).train()",
                 "reward": "preflab.reward_models.train.train_reward(cfg)",
                 "diffusion": "preflab.loops.diffusion.train_diffusion(cfg)",
                 "vlm": "preflab.loops.vlm.VisionTrainer(cfg).train()"}


def refuse_other_runner(cfg, trainer_class) -> None:
    """A ConfigError naming the runner of cfg.task when it is not this trainer's: Trainer(cfg) of an online config
    failed loading builtin:demo-sft's tokenizer ('Repo id must use alphanumeric chars'), one of a distillation config
    with a NotImplementedError about DistillBatch objectives; neither said what to call."""
    from preflab.recipe_names import RECIPE_TASKS

    runner = ("preflab.recipes.run_recipe(cfg)" if cfg.task in RECIPE_TASKS else
              "preflab.loops.distill.DistillTrainer(cfg).train()" if cfg.task == "sft" and
              cfg.teacher_model_name_or_path else OTHER_RUNNERS.get(cfg.task))
    if runner is not None and trainer_class is Trainer:
        what = f"task: {cfg.task}" + (" with teacher_model_name_or_path (distillation)" if "Distill" in runner else "")
        raise ConfigError(f"{what} is not run by preflab.loops.offline.Trainer; from Python run it with {runner}, or "
                          "from the shell with `preflab train CONFIG`.")


def given_policy_name(policy) -> str | None:
    """What a note calls a policy passed from Python (its class), in place of the config's model_name_or_path,
    which then only names the run; None for a policy preflab loads (the note names model_name_or_path)."""
    return None if policy is None else f"the policy passed from Python ({type(policy).__name__})"


class Trainer(TrainingRun):
    """Trains `policy` on preference pairs. Models, tokenizer and data may be passed in (tests, the demo).
    train_data / eval_data: rows (a datasets.Dataset or a list of dicts, as TRL's train_dataset / eval_dataset),
    checked and tokenized as a data file's rows, or examples already prepared by the batch kind."""

    # Extras that must carry gradient (Objective.gradient_extras) which this trainer computes itself: none, it
    # scores only each pair's chosen and rejected responses. A subclass that scores more sequences names them.
    computed_extras: tuple = ()
    scorer_class = LogProbScorer  # preflab.loops.vlm.VisionTrainer: VisionLogProbScorer
    token_stats_now = True  # score() computes TRL's token metrics (forward: on logged steps only)

    def __init__(self, cfg: TrainConfig, policy=None, ref=None, tokenizer=None, train_data=None, eval_data=None,
                 callbacks=None):
        """A build that fails after output_dir was locked (make_accelerator) releases the lock
        (preflab.loops.driver.BuildReleasesClaim, for every run kind)."""
        from preflab.config import preflight, resolve_epoch_eval
        from preflab.loops.prepare import config_reading_rows
        from preflab.models.load import cap_max_length, max_positions, reference_positions

        refuse_other_runner(cfg, type(self))
        preflight(cfg, check_models=policy is None)
        if policy is not None:  # loading options beside a model given from Python: applied or refused
            from preflab.models.given import check_given_models

            check_given_models(cfg, policy, ref, tokenizer)
        self.cfg = cfg
        self.callbacks = list(callbacks or [])  # see TrainingRun.emit (transformers TrainerCallback objects work)
        self.objective = cfg.objective()
        check_modality(self.objective, cfg.task)
        # extras the objective's own producer computes at every step (preflab.loops.extras_producer)
        self.producer = make_producer(self.objective, cfg)
        check_gradient_extras(self.objective, self.computed_extras + produced_extras(self.objective),
                              " (offline training scores only each pair's chosen and rejected responses)")
        self.kind = self.batch_kind(self.objective)
        sizes = ("per_device_train_batch_size",) + (
            ("per_device_eval_batch_size",) if cfg.eval_dataset_name or cfg.eval_fraction > 0 or eval_data else ())
        ones = [k for k in sizes if getattr(cfg, k) < 2]
        if getattr(self.objective, "uses_mismatched_completions", False) and ones:
            raise ConfigError(
                f"loss_type {cfg.loss_type!r} estimates its reference point (the KL term) from mismatched completions "
                "inside each micro-batch (example i's prompt with example i-1's completion); with "
                f"{ones[0]}=1 every example is paired with its own completion, so the KL term equals the implied "
                f"reward (TRL's KTOTrainer refuses this too). Set {ones[0]} >= 2 (gradient_accumulation_steps keeps "
                "a step's size), or use loss_type: apo_zero_unpaired.")
        if "prompt_logps" in self.objective.token_needs and (not hasattr(self.kind, "prompt_sequences") or
                                                             "token_kl" in self.objective.token_needs):
            raise ConfigError(f"objective {cfg.loss_type!r} needs the prompt tokens' log-probs, which this trainer "
                              f"does not score for {self.kind.name} batches or beside a token-level KL (the "
                              "reference gives response positions only); orpo: set nll_scope: response.")
        if cfg.pad_to_multiple_of and self.scorer_class is not LogProbScorer:
            raise ConfigError(f"pad_to_multiple_of applies to text models; {type(self).__name__} scores with "
                              f"{self.scorer_class.__name__}: remove pad_to_multiple_of from the config.")
        self.accelerator = make_accelerator(cfg)
        refuse_sharded_engine(self.producer, cfg, self.accelerator, self.objective)  # before the models load
        check_ref_sync(cfg, self.objective, self.accelerator)  # sync_ref_model: reference-free, FSDP / DeepSpeed
        self.out = Path(cfg.output_dir)
        self.main = self.accelerator.is_main_process
        if tokenizer is None:
            from preflab.models.load import load_tokenizer

            tokenizer = load_tokenizer(cfg.model_name_or_path, cfg.trust_remote_code)
        self.tokenizer = tokenizer
        self.data_report = {}
        self.stream = None  # streaming: true: the training examples are read as the steps need them
        # rows given from Python (a datasets.Dataset or a list of dicts, TRL's train_dataset) are read like a file's
        rows_cfg = None if cfg.streaming else config_reading_rows(cfg, train_data, eval_data)
        if cfg.streaming:
            train_data, eval_data = self._open_stream(policy, tokenizer, train_data, eval_data)
        elif train_data is None or rows_cfg is not None:
            cap_max_length(cfg, max_positions(policy if policy is not None else cfg.model_name_or_path,
                                              cfg.trust_remote_code), given_policy_name(policy))
            cap_max_length(cfg, reference_positions(cfg, ref), cfg.ref_model_name_or_path)
            if rows_cfg is not None:
                rows_cfg.max_length = cfg.max_length
            train_data, eval_data, self.data_report = self.kind.prepare(rows_cfg or cfg, tokenizer)
        self.train_data, self.eval_data = train_data, eval_data or []
        if policy is None:
            from preflab.models.load import load_models

            policy, ref = load_models(cfg, tokenizer)
        self.policy, self.ref = policy, ref
        from preflab.loops.prepare import check_ids_fit_embeddings, embedding_ids_check

        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        check_ids_fit_embeddings(policy, tokenizer, pad_id,
                                 ((self.data_report.get("train_rows", {}).get("source") or cfg.dataset_name,
                                   self.train_data),
                                  (cfg.eval_dataset_name or cfg.dataset_name, self.eval_data)))
        # a stream's examples are checked as each global batch is read (StreamedBatches.check)
        self.stream_ids_check = embedding_ids_check(policy, tokenizer, pad_id) if self.stream is not None else None
        self.router_coef = self._router_coef()  # the MoE router loss's coefficient, or None (none is added)
        self.router_loss = None  # score() sets it: the policy's router loss on the batch it scored
        from preflab.models.load import disable_dropout_of

        disable_dropout_of(cfg, policy, ref)  # models given from Python (or a task) too, not only loaded ones
        self.lora = is_lora(policy)
        # sync_ref_model (TR-DPO) moves the reference: a LoRA policy's becomes a separate copy of its base
        ref = self.ref = sync_reference_of(cfg, policy, ref)
        # LoRA without ref_model_name_or_path: the reference is the policy with its adapters disabled; a given
        # reference model is the reference, LoRA or not (it was loaded and then ignored under use_peft)
        self.ref_is_base = self.lora and ref is None
        if self.objective.needs_reference and ref is None and not self.lora:
            raise ConfigError(
                f"objective {cfg.loss_type!r} needs a reference model; none was given. A policy passed from Python "
                "gets no reference built from it (TRL's DPOTrainer copies the model when ref_model is None): pass "
                "ref=preflab.models.load.frozen_copy(policy) for that copy, or ref=another model; or use a "
                "reference-free loss_type (simpo, orpo, cpo), or a LoRA policy (its base is the reference).")
        self.precompute = cfg.precompute_ref_log_probs and self.objective.needs_reference
        if hasattr(self.kind, "fix_eval_pairing"):  # unpaired: KTO's eval mismatched pairs, TRL's chunks
            self.eval_data = self.kind.fix_eval_pairing(self.eval_data, cfg)
        if self.precompute and hasattr(self.kind, "fix_reference_inputs"):  # unpaired: KTO's mismatched pairs
            self.train_data, self.eval_data = self.kind.fix_reference_inputs(self.train_data, self.eval_data, cfg)
        if self.precompute and "token_kl" in self.objective.token_needs:
            raise ConfigError(f"objective {cfg.loss_type!r} needs token-level KL to the reference, which needs the "
                              "reference's hidden states at every step; set precompute_ref_log_probs: false.")
        refusal = fsdp2_token_kl_problem(cfg, self.objective,
                                         "FSDP2" if getattr(self.accelerator, "is_fsdp2", False) else None)
        if refusal:
            raise ConfigError(refusal)
        self.ref_logps, self.ref_cache_info = {}, {}
        if not flex_training_refused(policy, self.accelerator.device):
            self.layout  # noqa: B018  decided now, its fallback said as the run is built (see `layout`)
        set_attention_mode(cfg.attention, policy, ref)
        if cfg.gradient_checkpointing:
            from preflab.checkpointing_options import checkpoint_kwargs
            from preflab.models.load import enable_gradient_checkpointing

            enable_gradient_checkpointing(policy, checkpoint_kwargs(cfg))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if self.producer is not None:  # data and models ready: e.g. build variants, size a head
            refuse_produced_columns(self.objective, cfg, (("train", self.train_data), ("eval", self.eval_data)))
            self.data_report.update(self.producer.prepare(self))
        if self.stream is not None:
            from preflab.loops.streaming import StreamedBatches, StreamPlan

            self.plan = StreamPlan(cfg.per_device_train_batch_size, self.accelerator.num_processes,
                                   cfg.gradient_accumulation_steps, cfg.max_steps, self.stream)
            self.total_steps = cfg.max_steps
            self.streamed = StreamedBatches(self.stream, self.plan, check=self.stream_ids_check)
        else:
            lengths = [self.kind.count_tokens([x]) for x in self.train_data] if cfg.group_by_length else None
            self.plan, self.total_steps = make_plan(cfg, len(self.train_data), self.accelerator.num_processes,
                                                    lengths)
        resolve_epoch_eval(cfg, self.plan.steps_per_epoch, self.main)
        self._build_optimizer()
        # sync_ref_model (TR-DPO): the reference follows the policy after every ref_model_sync_steps-th step
        self.ref_sync = install_ref_sync(self)

    def batch_kind(self, objective):
        return kind_for(objective)

    def _router_coef(self) -> float | None:
        """router_aux_loss_coef as TRL 1.16 resolves it for this policy (preflab.scoring.router_loss), or None when
        no router loss is added; a scorer other than LogProbScorer cannot compute it: ConfigError."""
        from preflab.models.moe import router_loss_coef, router_shape

        coef = router_loss_coef(self.policy, self.cfg.router_aux_loss_coef)
        if coef is not None:
            router_shape(self.policy)  # the experts' count and top-k are known: a ConfigError now, not at step 1
        if coef is not None and self.scorer_class is not LogProbScorer:
            raise ConfigError(f"the policy is a mixture-of-experts model and TRL 1.16 adds router_aux_loss_coef="
                              f"{coef:g} x its routers' load-balancing loss, which {self.scorer_class.__name__} does "
                              "not compute; set router_aux_loss_coef: 0 to train on the objective's loss alone.")
        return coef

    def _open_stream(self, policy, tokenizer, rows, eval_data):
        """streaming: true: the stream of training examples over dataset_name (or `rows` given from Python:
        preflab.loops.streaming) and the eval set, read whole. Returns (train_data: [], eval_data)."""
        from preflab.loops.streaming import eval_examples, open_stream
        from preflab.models.load import cap_max_length, max_positions, reference_positions

        cfg = self.cfg
        cap_max_length(cfg, max_positions(policy if policy is not None else cfg.model_name_or_path,
                                          cfg.trust_remote_code), given_policy_name(policy))
        cap_max_length(cfg, reference_positions(cfg, None), cfg.ref_model_name_or_path)
        self.stream, self.data_report = open_stream(cfg, tokenizer, self.kind, rows=rows)
        if eval_data is None:
            eval_data, eval_report = eval_examples(cfg, tokenizer, self.kind, self.stream)
            self.data_report.update(eval_report)
        if self.main:
            print(f"preflab: data: streaming {self.stream.name} (rows are read, checked and tokenized as the steps "
                  f"need them; shuffle buffer {cfg.streaming_shuffle_buffer or 'off'}; counts and notes at the end and in "
                  "summary.json)")
        return [], eval_data

    def data_position(self) -> dict | None:
        return self.streamed.state() if self.stream is not None else None

    def restore_data_position(self, saved: dict | None, step: int) -> None:
        if self.stream is not None:
            self.streamed.restore(saved, step)

    @cached_property
    def layout(self) -> str:
        """The layout the scorer builds: requested_layout() checked against the models (effective_layout: its custom-mask
        probe runs a few forwards). Read as the run is built, except for a FlexAttention policy on the CPU, whose
        training train() refuses first: then when evaluate() (preflab eval --task vlm) first needs it."""
        return effective_layout(self.requested_layout(), self.policy, self.ref)

    def requested_layout(self) -> str:
        """The layout the run asks for (cfg.layout), checked against the models by `effective_layout`."""
        return self.cfg.layout

    def training_examples(self) -> list | None:
        return None if self.stream is not None else self.train_data

    def _build_optimizer(self):
        cfg = self.cfg
        self.scorer = self.scorer_class(self.policy, cfg.chunk_tokens)
        self.ref_scorer = self.scorer_class(self.ref, cfg.chunk_tokens) if self.ref is not None else None
        if self.ref is not None:
            self.ref.to(self.accelerator.device)
        self.extra_params = []
        if isinstance(self.objective, torch.nn.Module):  # an objective with its own parameters (e.g. token masks)
            self.objective.to(self.accelerator.device)
            if not list(self.objective.parameters()):  # lazily built: materialise on one batch first
                first = self.micro_batches(0)[0]
                with torch.no_grad():
                    self.objective(self.score(first.layout, positions=first.index))
            self.extra_params = list(self.objective.parameters())
        if self.producer is not None:  # trained with the policy, saved in checkpoints (checkpoint_extras)
            self.extra_params += self.producer.parameters()
        self.params = [p for p in self.policy.parameters() if p.requires_grad]
        owners = [self.policy, *([self.objective] if isinstance(self.objective, torch.nn.Module) else []),
                  *([self.producer.module()] if self.producer is not None and self.producer.module() is not None
                    else [])]  # the modules naming the parameters (weight-decay groups: make_optimizer)
        self.optimizer, self.scheduler = make_optimizer(cfg, self.params + self.extra_params, self.total_steps,
                                                        owners)
        if cfg.torch_compile:  # preflab.scoring.compile: what is compiled, and how shapes stay dynamic
            self.compile_graphs_before = graphs_compiled()
            self.scorer = compile_scorer(self.scorer, cfg)
            if self.ref_scorer is not None and not getattr(self.accelerator, "is_fsdp2", False):
                self.ref_scorer = compile_scorer(self.ref_scorer, cfg)
        extras = extra_modules(self.objective, self.producer) if is_sharded(self.accelerator) else {}
        if extras:  # the engine owns them (preflab.loops.engine_extras); one process / DDP: the scorer alone
            self.scorer = ScorerWithExtras(self.scorer, extras)
        self.scorer, self.optimizer = self.accelerator.prepare(self.scorer, self.optimizer)
        self.sync_module, self.checkpoint_module = self.scorer, self.policy
        self.extra_modules = extras
        # FSDP2 replaces the parameters by sharded DTensor ones (accelerate re-points the optimizer): clip and guard
        # those (the extra modules' too: reduced by the engine, not all-reduced by the step)
        self.params = [p for p in self.policy.parameters() if p.requires_grad]
        if extras:
            self.params += [p for m in extras.values() for p in m.parameters()]
            self.extra_params = []
        if getattr(self.accelerator, "is_fsdp2", False) and self.ref_scorer is not None:
            self.ref_scorer = shard_reference(self.accelerator, self.ref_scorer)

    # ------------------------------------------------------------------ scoring
    def _reference(self, layout):
        if not self.objective.needs_reference:
            return None, None
        if self.ref_scorer is None and not self.ref_is_base:
            raise PreflabError("the reference model was released after its log-probs were precomputed; pass the "
                               "pairs' dataset positions to Trainer.score() to read them.")
        with torch.no_grad():
            if self.ref_is_base:
                # under FSDP2 through the sharded root (its forward gathers the parameters outside the layers)
                base = self.scorer if getattr(self.accelerator, "is_fsdp2", False) else \
                    self.scorer_class(self.policy, self.cfg.chunk_tokens)
                with self.base_model():
                    return base(layout), backbone_and_head(self.policy)[1]
            return self.ref_scorer(layout), backbone_and_head(self.ref)[1]

    def base_model(self):
        """Context in which the (LoRA) policy is the model training started from: the reference when ref_is_base."""
        return self.policy.disable_adapter()

    def _precompute_reference(self) -> None:
        """Reference log-probs of every train and eval pair, from the on-disk cache or computed once; the reference
        model is then released, so no reference forward runs during training (precompute_ref_log_probs)."""
        if not self.precompute or self.ref_logps:
            return
        from preflab.scoring.ref_cache import precompute_reference

        started = time.perf_counter()

        def score_ref(layout):
            with self.accelerator.autocast():
                return self._reference(layout.to(self.accelerator.device))[0]

        self.ref_logps, info = precompute_reference(
            score_ref, self.ref if self.ref is not None else self.policy, self.ref_is_base,
            {"train": (self.train_data, self.cfg.per_device_train_batch_size),
             "eval": (self.eval_data, self.cfg.per_device_eval_batch_size)},
            self.collate, self.accelerator,
            {"dtype": self.cfg.torch_dtype, "device": self.accelerator.device.type},
            fingerprint=self.ref_inputs_fingerprint)
        self.ref_cache_info = {**info, "seconds": round(time.perf_counter() - started, 3)}
        self.ref, self.ref_scorer = None, None

    def ref_inputs_fingerprint(self, examples) -> str:
        """sha256 of everything besides the weights that the reference's log-probs of `examples` depend on: the
        reference cache's key (token ids here, with KTO's fixed mismatched completions for unpaired examples: the
        batch kind's reference_fingerprint; VisionTrainer adds the pixels)."""
        from preflab.scoring.ref_cache import pairs_fingerprint

        return getattr(self.kind, "reference_fingerprint", pairs_fingerprint)(examples)

    def score(self, layout, train: bool = True, positions: list[int] | None = None):
        """PairBatch of policy (and reference) log-probs, with the objective's token needs in extras. `positions`:
        the pairs' dataset positions, to read cached reference log-probs (split "train" or, train=False, "eval")."""
        host_mask = layout.response_mask  # the layout as built on the host, before it moves to the device
        host_extras = layout.extras
        needs = self.objective.token_needs
        prompts = self.kind.prompt_sequences(layout) if "prompt_logps" in needs else 0
        if prompts:
            layout.prompt_plan(prompts)  # the prompt tokens' gather plan, built on the host like the response's
        layout = layout.to(self.accelerator.device)
        if self.cfg.torch_compile:
            before_compiled_call(layout, self.accelerator.device, (self.policy, self.ref))
        with self.accelerator.autocast():
            if self.ref_logps and positions is not None:
                ref = self.ref_logps["train" if train else "eval"].scores(positions, host_mask,
                                                                          self.accelerator.device,
                                                                          device_mask=layout.response_mask)
                ref_head = None
            else:
                ref, ref_head = self._reference(layout)
            extra = {"want_wpo": True} if "wpo" in needs else {}  # WPO's per-token term
            if prompts:
                extra["prompt_sequences"] = prompts
            # TRL's DPO token metrics (self.token_sums); forward turns them off on steps that are not logged.
            # A compiled scorer computes them on every step (read on the logged ones only): the flag is a guard of
            # its graph, and switching it at each logging step would compile (and cache) a graph more per grad mode
            stats = self.token_stats_now and hasattr(self.kind, "token_sums")
            if stats or (self.cfg.torch_compile and hasattr(self.kind, "token_sums")):
                extra["want_token_stats"] = True
            if self.router_coef is not None:  # the MoE routers' load-balancing loss, from the same forward
                extra["want_router_loss"] = True
            policy = self.scorer(layout, want_hidden="hidden" in needs,
                                 ref=ref if "token_kl" in needs else None,
                                 ref_head=ref_head if "token_kl" in needs else None, **extra)
        # read by forward and evaluate, beside the objective's metrics (on the device: no host sync)
        self.token_sums = self.kind.token_sums(policy.token_stats, policy.mask, host_extras) if stats else {}
        self.router_loss = policy.router_loss
        batch = self.kind.split(policy, ref, layout.extras)
        if self.producer is not None:
            batch.extras.update(self.producer.extras(self, positions, train, scored=(policy, layout)))
        return batch

    def objective_output(self, batch):
        """The objective on `batch` (from score()), plus the policy's own loss from that forward: TRL's
        router_aux_loss_coef x the MoE routers' load-balancing loss, logged as aux_loss (preflab.scoring.router_loss).
        The objective never sees it."""
        out = self.objective(batch)
        if self.router_loss is not None:
            from preflab.scoring.router_loss import add_router_loss

            out, self.router_loss = add_router_loss(out, self.router_loss, self.router_coef), None
        return out

    def forward(self, mb):
        # the token metrics cost 2-7% of the scorer's time on CPU (vocabulary 8k-128k): only on the logged steps
        # (an eager scorer computes them there only; a compiled one on every step, see score())
        self.token_stats_now = self._log_due(getattr(self, "step", 0) + 1)
        try:
            batch = self.score(mb.layout, positions=mb.index)
            self._share_kl_estimate(batch)
            ratio = getattr(mb, "examples_per_token", None)
            if ratio is not None:  # the sft term's token mean over the whole step (objectives.sft token_mean)
                batch.extras["examples_per_token"] = ratio
            out = self.objective_output(batch)
        finally:
            self.token_stats_now = True
        out.metrics = {**out.metrics, **ratios(self.token_sums)}
        out.metric_counts = {**out.metric_counts, **counts(self.token_sums)}  # token-weighted over the step
        return out

    def _share_kl_estimate(self, batch) -> None:
        """A training micro-batch on several processes, for an objective whose statistic is taken over the processes
        (base.statistic_over_processes_parts: KTO's reference point): batch.kl_mean_over_processes = the mean over
        the processes of their micro-batches' KL estimates (UnpairedBatch.mismatched_kl), one all-reduce of one
        number on the device (no host read), as TRL 1.16's KTOTrainer gathers its `kl` (gather_for_metrics(kl).mean())
        before the clamp. Every process runs the same number of micro-batches a step (BatchPlan), so the all-reduces
        pair up. Evaluation, which every process runs over the whole eval set alone, keeps each batch's own."""
        acc = self.accelerator
        if acc.num_processes == 1 or not isinstance(batch, UnpairedBatch) or batch.policy_kl is None:
            return
        if statistic_over_processes_parts(self.objective):
            batch.kl_mean_over_processes = acc.reduce(batch.mismatched_kl(), reduction="mean")

    def collate(self, items):
        """The batch kind's layout of `items`, rows rounded up to pad_to_multiple_of (preflab.data.layout.bucket)."""
        layout = self.kind.collate(items, self.pad_id, self.layout)
        return bucket(layout, self.cfg.pad_to_multiple_of, self.pad_id) if self.cfg.pad_to_multiple_of else layout

    def micro_batches(self, step: int) -> list[MicroBatch]:
        """This rank's micro-batches at global step `step`, in the order of the shared BatchPlan."""
        rank = self.accelerator.process_index
        if self.stream is not None:  # the step's global batch from the stream, sliced as BatchPlan slices
            window, start = self.streamed.window(step)
            positions = self.plan.slices(list(range(start, start + len(window))), rank)
            groups = [([window[i - start] for i in index], index) for index in positions]
        else:
            groups = [([self.train_data[i] for i in index], index) for index in self.plan.indices(step, rank)]
        out = []
        for items, index in groups:
            out.append(MicroBatch(self.collate(items), [x.row_id for x in items],
                                  index, self.kind.count_tokens(items)))
        from preflab.objectives.sft import wants_step_token_mean

        if wants_step_token_mean(self.objective):
            self._tell_step_token_mean(out, groups)
        return out

    def _tell_step_token_mean(self, mbs: list[MicroBatch], groups) -> None:
        """Each micro-batch told N / T of the whole step (N pairs, T chosen-response tokens, all micro-batches of
        all processes; one all-reduce of two numbers), for an sft term with token_mean "step"."""
        chosen = [len(x.chosen_ids) for items, _ in groups for x in items if hasattr(x, "chosen_ids")]
        if len(chosen) != sum(len(items) for items, _ in groups):
            raise ConfigError(f"sft token_mean 'step' counts the chosen responses' tokens of pairs; the "
                              f"{self.kind.name} batches of this run have none. Set objective_params.token_mean: "
                              "micro_batch.")
        local = [float(len(chosen)), float(sum(chosen))]
        acc = self.accelerator
        if acc.num_processes > 1:
            local = acc.reduce(torch.tensor(local, device=acc.device), reduction="sum").tolist()
        for mb in mbs:
            mb.examples_per_token = local[0] / max(local[1], 1.0)

    def before_train(self) -> None:
        self._precompute_reference()

    def summary_extras(self) -> dict:
        extras = {"layout": self.layout, "reference_cache": self.ref_cache_info or None}
        if getattr(self, "ref_sync", None) is not None:
            extras["ref_model_sync"] = self.ref_sync.summary()
        if self.cfg.torch_compile:  # graphs dynamo compiled in this process during this run (all frames)
            extras["torch_compile"] = {"graphs": graphs_compiled() - self.compile_graphs_before,
                                       "backend": self.cfg.torch_compile_backend or "inductor",
                                       "mode": self.cfg.torch_compile_mode or "default"}
        if self.stream is not None:  # the counts of the rows read so far, said as the ordinary run says them
            from preflab.loops.streaming import stream_notes, stream_report

            extras["data"] = {**self.data_report, **stream_report(self.stream)}
            if self.main:
                n_eval = (self.data_report.get("eval_rows") or {}).get("examples", len(self.eval_data or []))
                # n_eval: examples read, as the ordinary run says
                for line in stream_notes(self.stream, n_eval, self.objective):
                    print(f"preflab: {line}")
        return extras

    def checkpoint_extras(self) -> dict:
        """The driver's (the objective's own tensors) plus the extras producer's parameters, by name, plus a
        syncing run's reference (sync_ref_model: the reference moves, so a resume needs its weights)."""
        out = super().checkpoint_extras()
        reference = reference_tensors(getattr(self, "ref_sync", None))
        if getattr(self, "producer", None) is None or self.extra_modules:  # engine-owned: in its checkpoint
            return {**out, **reference}
        own = {id(p) for p in self.producer.parameters()}
        out = {k: v for k, v in out.items() if id(v) not in own}
        return {**out, **{f"producer.{i}": p for i, p in enumerate(self.producer.parameters())}, **reference}

    def restored_extras(self, path: Path, step: int, note=None) -> dict:
        """checkpoint_extras, less the reference of a syncing run when `path` was written without one
        (preflab.loops.ref_sync.present_in_checkpoint)."""
        return present_in_checkpoint(self.checkpoint_extras(), path, step, getattr(self, "ref_sync", None), note)

    def write_card(self, summary: dict) -> None:
        write_model_card(self.out, self.cfg, summary)

    # ------------------------------------------------------------------ evaluation and saving
    def evaluate(self) -> dict:
        """Eval loss and metrics (prefixed eval_) plus ranking accuracy and log-prob drift on the eval pairs."""
        if not self.eval_data:
            return self.no_eval_metrics()
        self._precompute_reference()
        from preflab.report.margins import append_pair_margins, margins_histogram_data

        self.policy.eval()
        sums, weights, differences, margins, token_sums = {}, {}, {}, [], {}
        with torch.no_grad():
            for i in range(0, len(self.eval_data), self.cfg.per_device_eval_batch_size):
                chunk = self.eval_data[i:i + self.cfg.per_device_eval_batch_size]
                batch = self.score(self.collate(chunk), train=False,
                                   positions=list(range(i, i + len(chunk))))
                out = self.objective_output(batch)
                values = {"loss": out.loss, **out.metrics, **self.kind.eval_metrics(batch)}
                for key, value in self.token_sums.items():  # token-weighted over the whole eval set
                    token_sums[key] = token_sums[key] + value if key in token_sums else value
                if isinstance(batch, PairBatch):
                    margins += margins_histogram_data(batch, getattr(self.objective, "beta", self.cfg.beta))
                differences.update(out.metric_differences)
                for key, value in values.items():  # weighted by what each averages (ObjectiveOutput.metric_counts)
                    if key in differences:
                        continue
                    weight = float(out.metric_counts.get(key, len(chunk))) if key != "loss" else len(chunk)
                    sums[key] = sums.get(key, 0.0) + float(value) * weight
                    weights[key] = weights.get(key, 0.0) + weight
        if self.cfg.generate_during_eval and self.main:
            with self.main_writes():  # a failure stops every rank at the step's end (TrainingRun.main_writes)
                self._write_eval_samples()
        self.policy.train()
        if margins and self.main:  # per-pair margins for the report's start / end histograms
            with self.main_writes():
                append_pair_margins(self.out, self.step, margins)
        sums = {k: v / weights[k] for k, v in sums.items() if weights[k] > 0}
        for key, (a, b) in differences.items():
            if a in sums and b in sums:
                sums[key] = sums[a] - sums[b]
        sums.update({k: float(v) for k, v in ratios(token_sums).items() if float(token_sums[k][1]) > 0})
        return {f"eval_{k}": v for k, v in sums.items()}

    def _write_eval_samples(self, count: int = 4) -> None:
        """TRL's generate_during_eval: greedy generations of the policy (and of the reference, when it is still
        loaded) for the first `count` eval prompts, appended to eval_samples.jsonl with the step."""
        import json

        from preflab.generate import generate_text

        pairs = [p for p in self.eval_data[:count] if hasattr(p, "prompt_ids")]
        if not pairs:
            return
        prompts = [list(p.prompt_ids) for p in pairs]
        new_tokens = min(64, self.cfg.max_completion_length or 64)
        policy = self.accelerator.unwrap_model(self.policy)
        texts = generate_text(policy, self.tokenizer, prompts, max_new_tokens=new_tokens)
        refs = [None] * len(prompts)
        if self.objective.needs_reference and self.ref_is_base:
            with self.base_model():
                refs = generate_text(policy, self.tokenizer, prompts, max_new_tokens=new_tokens)
        elif self.ref is not None:
            refs = generate_text(self.ref, self.tokenizer, prompts, max_new_tokens=new_tokens)
        with open(self.out / "eval_samples.jsonl", "a") as f:
            for pair, text, ref in zip(pairs, texts, refs):
                row = {"step": self.step, "row_id": pair.row_id,
                       "prompt": self.tokenizer.decode(pair.prompt_ids, skip_special_tokens=True),
                       "policy": text, "reference": ref}
                f.write(json.dumps(row) + "\n")

    def write_model(self) -> None:
        """Final weights as safetensors (LoRA: the adapter) with the tokenizer and a model card."""
        model = self.accelerator.unwrap_model(self.policy)
        gathered = {"state_dict": self.final_state_dict} if self.final_state_dict else {}  # FSDP / DeepSpeed
        with original_dropout_config(model):  # config.json keeps the rates disable_dropout zeroed for training
            model.save_pretrained(self.out, safe_serialization=True, **gathered)
        self.tokenizer.save_pretrained(self.out)
        if self.producer is not None:  # with load_best_model_at_end the best checkpoint's (the driver restored it)
            self.producer.save(self.out, self.final_extra_states.get("producer"))

