"""torch_compile with the real inductor backend (issue 17): training equals eager, and the graphs compiled stay
bounded while batch shapes change (preflab.scoring.compile marks the layout's sizes dynamic)."""
import json
import sys
from pathlib import Path

import pytest
import torch

from preflab.config import config_from_dict
from preflab.errors import ConfigError

sys.path.insert(0, str(Path(__file__).parents[1] / "loops"))
from tiny_run import run  # noqa: E402


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Dynamo's caches are per process (per code object): each test counts its own graphs."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def losses(out):
    return [json.loads(line)["loss"] for line in open(Path(out) / "metrics.jsonl") if '"loss"' in line]


def weights(trainer):
    return {k: v.detach().clone() for k, v in trainer.policy.state_dict().items()}


def shapes(trainer, steps):
    """(input width T, response tokens M) of every micro-batch of the first `steps` steps."""
    return {(mb.layout.input_ids.shape[1], mb.layout.gather.pred.shape[0])
            for s in range(steps) for mb in trainer.micro_batches(s)}


@pytest.mark.slow  # inductor compiles two graphs: ~20 s on one CPU thread
def test_inductor_trains_like_eager_with_one_graph_per_grad_mode(tmp_path):
    compiled_summary, compiled = run(tmp_path / "compiled", max_steps=4, torch_compile=True, pad_to_multiple_of=8)
    eager_summary, eager = run(tmp_path / "eager", max_steps=4, pad_to_multiple_of=8)
    assert type(compiled.scorer).__name__ == type(compiled.ref_scorer).__name__ == "OptimizedModule"
    assert len({m for _, m in shapes(compiled, 4)}) > 1  # the response-token count changes from step to step
    # one graph for the reference (no_grad), one for the policy (grad), whatever the batch sizes: a static first
    # graph would recompile at the next size (3 graphs over these 4 steps without the dynamic marks)
    assert compiled_summary["torch_compile"] == {"graphs": 2, "backend": "inductor", "mode": "default"}
    assert "torch_compile" not in eager_summary
    assert losses(tmp_path / "compiled") == pytest.approx(losses(tmp_path / "eager"), abs=1e-5)
    diff = max((a - b).abs().max().item() for a, b in zip(weights(compiled).values(), weights(eager).values()))
    assert diff < 1e-5


@pytest.fixture(scope="module")
def logged_every_two_steps(tmp_path_factory):
    """One compiled run (eager backend, 6 steps, widths changing every step: no pad_to_multiple_of) logging every 2
    steps, and the eager run of the same config, shared by the two tests below that read them (a traced run costs
    ~5 CPU-s): {"summary", "compile_on", "shapes", "root"}; root / "compiled" and root / "eager" hold the runs.
    Dynamo is reset before each run (its caches are per code object, shared with the tests before)."""
    root = tmp_path_factory.mktemp("logged-every-two")
    torch._dynamo.reset()
    summary, trainer = run(root / "compiled", max_steps=6, logging_steps=2, torch_compile_backend="eager")
    out = {"summary": summary, "compile_on": trainer.cfg.torch_compile, "shapes": shapes(trainer, 6), "root": root}
    del trainer
    torch._dynamo.reset()
    run(root / "eager", max_steps=6, logging_steps=2)
    return out


@pytest.mark.slow  # 3 short runs (one shared with the logging test), two of them traced by dynamo: ~10 s
def test_graphs_stay_bounded_without_bucketing_and_with_several_head_chunks(tmp_path, logged_every_two_steps):
    """Dynamo decides the graphs (the backend only compiles them): the eager backend counts them in seconds.
    Widths change every step in the shared run (no pad_to_multiple_of): 2 graphs; with chunk_tokens 10 the LM head
    runs in 3 or 4 chunks (one of them a single position when M = 31): per grad mode three graphs whatever the chunk
    count (the forward up to the head, the compiled head on 10 positions, the rest; the chunk loop runs between
    them), and the compiled chunking (a last window of 10 positions, its overlap dropped) gives eager's numbers."""
    plain = logged_every_two_steps
    assert plain["compile_on"]  # a backend turns torch_compile on (TRL's TrainingArguments)
    assert len({t for t, _ in plain["shapes"]}) > 1
    assert plain["summary"]["torch_compile"]["graphs"] == 2
    torch._dynamo.reset()
    summary, trainer = run(tmp_path / "chunks", max_steps=6, torch_compile_backend="eager", chunk_tokens=10)
    # the compiled scorer keeps the dense mask (segment attention is not traced): the eager run too
    _, eager = run(tmp_path / "eager", max_steps=6, chunk_tokens=10, attention="dense")
    sizes = {m for _, m in shapes(trainer, 6)}
    counts = {-(-m // 10) for m in sizes}
    assert len(counts) == 2 and any(m % 10 == 1 for m in sizes)
    assert summary["torch_compile"]["graphs"] == 2 * 3
    assert losses(tmp_path / "chunks") == pytest.approx(losses(tmp_path / "eager"), abs=1e-6)
    diff = max((a - b).abs().max().item() for a, b in zip(weights(trainer).values(), weights(eager).values()))
    assert diff < 1e-6


@pytest.mark.slow  # 4 graphs traced by dynamo: ~10 s
def test_graphs_stay_bounded_over_many_head_chunk_counts():
    """A run whose batches need 1 to 12 LM-head chunks: the chunk loop runs outside the scorer's graph with a
    compiled head of one size (preflab.scoring.lm LogProbScorer._head_outside_graph), so the graphs stay at 4
    whatever the chunk counts (before: one per chunk count and grad mode, and the scorer's forward reached dynamo's
    recompile limit of 8 and ran eagerly from then on; fail_on_recompile_limit_hit makes that an error here).
    Without gradient here (the graphs with gradient are as many more; training through them equals eager in
    test_graphs_stay_bounded_without_bucketing_and_with_several_head_chunks); the log-probs equal eager's."""
    from types import SimpleNamespace

    from preflab.data.layout import padded
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
    from preflab.scoring.compile import before_compiled_call, compile_scorer, graphs_compiled
    from preflab.scoring.lm import LogProbScorer

    torch.set_num_threads(1)
    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok, seed=0)
    eager = LogProbScorer(model, chunk_tokens=4)
    compiled = compile_scorer(LogProbScorer(model, chunk_tokens=4),
                              SimpleNamespace(torch_compile_backend="eager", torch_compile_mode=None))
    before, counts = graphs_compiled(), set()
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        for n in range(2, 40, 3):
            layout = padded([([1, 9, 8], [10 + i for i in range(n)]), ([1, 7], [50 + i for i in range(n // 2 + 1)])],
                            tok.pad_token_id)
            counts.add(-(-int(layout.response_mask.sum()) // 4))
            before_compiled_call(layout, "cpu", (model,))
            with torch.no_grad():
                torch.testing.assert_close(compiled(layout).token_logps, eager(layout).token_logps, atol=1e-6, rtol=0)
    assert len(counts) >= 10 and 1 in counts
    # one chunk: the whole forward; several: the forward up to the head, the head (one size), the rest
    assert graphs_compiled() - before == 4


def test_compile_options_are_checked():
    base = dict(model_name_or_path="builtin:tiny-llama", dataset_name="synthetic", use_cpu=True)
    cfg = config_from_dict({**base, "torch_compile_mode": "max-autotune-no-cudagraphs"})
    assert cfg.torch_compile and cfg.torch_compile_backend is None
    with pytest.raises(ConfigError, match="torch_compile_mode='default' configures the inductor backend"):
        config_from_dict({**base, "torch_compile_backend": "eager", "torch_compile_mode": "default"})
    with pytest.raises(ConfigError, match="CUDA graphs, which do not exist on the CPU"):
        config_from_dict({**base, "torch_compile_mode": "reduce-overhead"})
    with pytest.raises(ConfigError, match=r"torch_compile_backend='cudagraphs' uses CUDA graphs, which do not exist on "
                                          r"the CPU"):
        config_from_dict({**base, "torch_compile_backend": "cudagraphs"})
    with pytest.raises(ConfigError, match="task: reward runs eagerly"):
        config_from_dict({**base, "task": "reward", "torch_compile": True})
    with pytest.raises(ConfigError, match="torch_compile_backend"):
        config_from_dict({**base, "torch_compile_backend": "tensorrt"})
    with pytest.raises(ConfigError, match="torch_compile_mode"):
        config_from_dict({**base, "torch_compile_mode": "fast"})


@pytest.fixture(scope="module")
def sft_eager_then_compiled(tmp_path_factory):
    """A notebook's two SFT runs in one process (task: sft, right-padded rows, no reference, 3 steps): an eager run
    ("first"), then the same run compiled (eager backend, "second") while the first run's trainer and policy are still
    alive, freed by the garbage collector at the second run's step 1 (after its scorer was traced). Shared by the two
    tests below: {"second": the compiled run's summary, "freed": whether the first trainer was freed, "root"}."""
    import gc

    from preflab.loops.sft import SFTTrainer

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("sft-eager-then-compiled")
    common = {"task": "sft", "model_name_or_path": "builtin:tiny-llama", "learning_rate": 1e-3,
              "dataset_name": str(Path(__file__).parents[2] / "examples/data/loud_echo_sft.jsonl"), "max_steps": 3,
              "logging_steps": 1, "disable_tqdm": True, "use_cpu": True, "max_length": 128,
              "per_device_train_batch_size": 4}
    torch._dynamo.reset()
    first = [SFTTrainer(config_from_dict({**common, "output_dir": str(root / "first")}))]
    first[0].train()
    second = SFTTrainer(config_from_dict({**common, "output_dir": str(root / "second"),
                                          "torch_compile_backend": "eager"}))
    batches = second.micro_batches

    def micro_batches(step):
        if step == 1:  # the first run's trainer and policy freed after the second's scorer was traced
            first.clear()
            gc.collect()
        return batches(step)

    second.micro_batches = micro_batches
    summary = second.train()
    del second
    torch._dynamo.reset()
    return {"second": summary, "freed": not first, "root": root}


def test_sft_right_padded_rows_compile_to_one_graph(sft_eager_then_compiled):
    """task: sft (right-padded rows, no reference): the mask probe of models.attention runs before the compiled
    call, not inside the trace (there it broke the graph and added 3 more), and the loss is eager's (the compiled and
    eager runs of sft_eager_then_compiled)."""
    root = sft_eager_then_compiled["root"]
    assert sft_eager_then_compiled["second"]["torch_compile"]["graphs"] == 1
    assert losses(root / "second") == pytest.approx(losses(root / "first"), abs=1e-6)


def test_second_trainer_in_one_process_compiles_once_whatever_the_first_becomes(sft_eager_then_compiled):
    """A notebook trains twice in one process: an eager SFT run, then the same run compiled (sft_eager_then_compiled).
    The first run's policy is still alive when the second's scorer is traced, and the garbage collector frees it
    during the second run (there: at step 1, on purpose). Before, right_padding_needs_no_mask kept its verdicts in a
    module-level dict that the compiled scorer read inside its trace, so dynamo guarded on every model ever probed
    (the dict's length and each key): the first policy's collection failed the guards and recompiled mid-run (2
    graphs), and a collection during the trace itself raised IndexError while dynamo built those guards
    (list(dict.keys(...))[i]). The verdict now lives on each model: one graph, and the loss is the eager run's."""
    root = sft_eager_then_compiled["root"]
    assert sft_eager_then_compiled["freed"]
    assert sft_eager_then_compiled["second"]["torch_compile"]["graphs"] == 1
    assert losses(root / "second") == pytest.approx(losses(root / "first"), abs=1e-6)


@pytest.mark.slow  # 2 short runs, one traced by dynamo (eager backend): ~6 s
def test_orpo_prompt_tokens_keep_the_graphs_of_dpo(tmp_path):
    """orpo's default NLL scores the chosen prompts' tokens too (the "prompt_logps" need): their positions join the
    response's in the one chunked head pass, so a run whose head needs several chunks still compiles 3 graphs per
    grad mode (a second head pass after the chunk loop would be 9) and trains as eager does."""
    summary, trainer = run(tmp_path / "compiled", max_steps=4, torch_compile_backend="eager", loss_type="orpo",
                           chunk_tokens=4)
    _, eager = run(tmp_path / "eager", max_steps=4, loss_type="orpo", chunk_tokens=4)
    assert trainer.objective.token_needs == ("prompt_logps",)
    assert summary["torch_compile"]["graphs"] == 3
    assert losses(tmp_path / "compiled") == pytest.approx(losses(tmp_path / "eager"), abs=1e-6)


def test_the_compiled_scorer_does_not_guard_on_the_per_device_chunk_budgets(monkeypatch):
    """The LM-head chunk budget is read once per device (preflab.scoring.chunking). The compiled scorer looked it up
    in chunking's module-level dict keyed by device, so dynamo guarded on that dict (that it holds "cpu", and the
    value): a process whose dict then changed (another device's budget read, the cache emptied) failed the guards
    and recompiled, the class of bug of right_padding_needs_no_mask's module-level dict. The budget is now kept on
    each model's LM head, put there eagerly by before_compiled_call: emptying the dict between calls costs no
    graph, and the log-probs are eager's."""
    from types import SimpleNamespace

    import preflab.scoring.chunking as chunking
    from preflab.data.layout import padded
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
    from preflab.scoring.compile import before_compiled_call, compile_scorer, graphs_compiled
    from preflab.scoring.lm import LogProbScorer

    torch.set_num_threads(1)
    monkeypatch.setattr(chunking, "_budgets", {})
    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok, seed=0)
    eager = LogProbScorer(model)
    compiled = compile_scorer(LogProbScorer(model), SimpleNamespace(torch_compile_backend="eager",
                                                                    torch_compile_mode=None))
    before = graphs_compiled()
    for n in (3, 5, 4):
        layout = padded([([1, 9, 8], [10 + i for i in range(n)]), ([1, 7], [50 + i for i in range(n + 1)])],
                        tok.pad_token_id)
        before_compiled_call(layout, "cpu", (model,))
        with torch.no_grad():
            torch.testing.assert_close(compiled(layout).token_logps, eager(layout).token_logps, atol=1e-6, rtol=0)
        chunking._budgets.clear()  # after the first call: the per-device dict no longer says what the graph read
    assert graphs_compiled() - before == 1


@pytest.mark.slow  # the 2 short runs of logged_every_two_steps, one traced by dynamo (eager backend)
def test_logging_steps_compile_no_graph_of_their_own(logged_every_two_steps):
    """TRL's token metrics are computed on logged steps only (Trainer.forward). want_token_stats is a guard of the
    compiled scorer's graph: a run logging every 2 steps compiled a third graph at its first logging step (the policy
    with gradient, with the statistics) and switched between two cached graphs from then on; on a GPU that compile
    fell inside the benchmark runner's timed window (it logs its last step). A compiled scorer now computes the
    statistics on every step and the trainer reads them on the logged steps: 2 graphs (the reference without
    gradient, the policy with it), as many as a run logging every step, and the logged metrics are eager's."""
    from preflab.scoring.token_metrics import TOKEN_METRICS

    root = logged_every_two_steps["root"]  # the compiled run and its eager twin (the fixture)
    assert logged_every_two_steps["summary"]["torch_compile"]["graphs"] == 2

    def rows(out):
        return [json.loads(line) for line in open(Path(out) / "metrics.jsonl") if '"loss"' in line]

    compiled, eager = rows(root / "compiled"), rows(root / "eager")
    assert [r["step"] for r in compiled] == [r["step"] for r in eager] == [2, 4, 6]
    for name in ("loss", *TOKEN_METRICS):
        assert [r[name] for r in compiled] == pytest.approx([r[name] for r in eager], abs=1e-6), name


@pytest.mark.slow  # 2 short runs, one traced by dynamo (eager backend): ~25 s
def test_compiled_evaluation_equals_eager_in_a_no_grad_graph_of_its_own(tmp_path):
    """Evaluation scores the policy under no_grad, as the reference is scored: the same computation, yet a graph of
    its own (3 graphs, not 2): the policy's parameters require grad and the reference's do not, and dynamo's tensor
    guards check requires_grad even under no_grad (test_no_grad_graphs_differ_by_the_parameters_requires_grad).
    The compiled evaluation's metrics are eager's."""
    summary, _ = run(tmp_path / "compiled", max_steps=2, eval_steps=1, n_eval_pairs=8,
                     torch_compile_backend="eager")
    run(tmp_path / "eager", max_steps=2, eval_steps=1, n_eval_pairs=8)
    assert summary["torch_compile"]["graphs"] == 3

    def evals(out):
        return [json.loads(line) for line in open(Path(out) / "metrics.jsonl") if '"eval_loss"' in line]

    compiled_rows, eager_rows = evals(tmp_path / "compiled"), evals(tmp_path / "eager")
    assert [r["step"] for r in compiled_rows] == [r["step"] for r in eager_rows] == [1, 2]
    for name in ("eval_loss", "eval_rewards/margins", "eval_logps/chosen", "eval_entropy", "eval_logits/rejected"):
        assert [r[name] for r in compiled_rows] == pytest.approx([r[name] for r in eager_rows], abs=1e-6), name


def test_no_grad_graphs_differ_by_the_parameters_requires_grad():
    """Why a compiled run with evaluation compiles a no-grad graph for the reference and another for the evaluated
    policy (docs/configuration.md, torch.compile): two compiled scorers (the Trainer's scorer and ref_scorer: one
    code object, one cache of graphs) of two copies of one model, called under no_grad with the same flags and
    layout, compile one graph while both copies are frozen and a second once one copy's parameters require grad
    (dynamo's guard: "requires_grad mismatch"). When a torch release stops guarding
    requires_grad under no_grad, this fails: then the evaluated policy can share the reference's graph (pass both
    the same want_token_stats, Trainer.score / Trainer._reference)."""
    from types import SimpleNamespace

    from preflab.data.layout import padded
    from preflab.models.load import frozen_copy
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
    from preflab.scoring.compile import before_compiled_call, compile_scorer, graphs_compiled
    from preflab.scoring.lm import LogProbScorer

    torch.set_num_threads(1)
    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok, seed=0).eval()
    copies = [frozen_copy(model), frozen_copy(model)]
    cfg = SimpleNamespace(torch_compile_backend="eager", torch_compile_mode=None)
    scorers = [compile_scorer(LogProbScorer(copy), cfg) for copy in copies]
    layout = padded([([1, 9, 8], [10, 11, 12]), ([1, 7], [50, 51])], tok.pad_token_id)
    before, logps = graphs_compiled(), []
    for requires_grad in (False, True):
        copies[1].requires_grad_(requires_grad)
        for copy, scorer in zip(copies, scorers):
            before_compiled_call(layout, "cpu", (copy,))
            with torch.no_grad():
                logps.append(scorer(layout).token_logps)
        assert graphs_compiled() - before == (1 if not requires_grad else 2)
    for other in logps[1:]:
        torch.testing.assert_close(other, logps[0], atol=0, rtol=0)
