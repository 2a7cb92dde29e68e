"""torch.compile of the scorers: torch_compile, torch_compile_backend, torch_compile_mode (TRL's TrainingArguments
names; setting a backend or a mode turns torch_compile on, as in TRL).

What is compiled: the whole LogProbScorer forward of the policy (backbone, gather at the response positions, the
chunked LM head with its float32 log-softmax, the scatter back to [N, L]) and, under no_grad, the reference's.
Dynamo traces it without graph breaks on a host-built layout (one break when the LM head needs several chunks, see
below): the gather plan (LayoutBatch.gather) comes from the host as index lists, so no data-dependent shape is made
on the device.

Shapes. A layout's sizes change from batch to batch: rows R and width T of input_ids (width rounded up by
pad_to_multiple_of), the response grid N x L, the response-token count M of the gather plan. Left to automatic
dynamic shapes, dynamo compiles a static graph for the first batch and then recompiles once for each dimension
that later changes (3 graphs over the first 3 steps of the tests' tiny run). mark_layout_dynamic marks those
dimensions dynamic before every call, so one graph per (scorer, grad mode) serves every batch.

LM-head chunks. Responses longer than one chunk need ceil(M / chunk) chunks; traced as a Python loop, each chunk
count would be a graph of its own, and a run whose batches span more than a few counts would reach dynamo's
recompile limit (8 per function) and run the scorer eagerly from then on. So with several chunks the loop runs
outside the graph (LogProbScorer._head_outside_graph, a torch.compiler.disable'd method): the forward up to the
head is one graph, each chunk goes through _head_chunk compiled on its own (compile_scorer) and always on `chunk`
positions (the last window overlaps the one before; its repeated outputs are dropped), and the rest of the forward
(dynamo resumes after the call) is another graph. Per grad mode: one graph for batches of one chunk, three for
batches of several, whatever their number. What can still recompile: a dimension that is 0 or 1 in the first
batch (dynamo specialises those). The graphs compiled are counted in summary.json (`torch_compile.graphs`).
"""
from __future__ import annotations

import torch

COMPILED_TASKS = ("dpo", "sft", "vlm")  # the tasks trained by preflab.loops.offline.Trainer and its subclasses
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def compile_conflicts(cfg) -> list[str]:
    """The torch_compile options that cannot work together (TrainConfig._conflicts)."""
    out = []
    from preflab.recipe_names import RECIPE_TASKS

    # a recipe's stages: preflab.recipe_options passes torch_compile to those that compile (raft_ladder, ...) and
    # refuses it for the others
    if cfg.torch_compile and cfg.task not in COMPILED_TASKS and cfg.task not in RECIPE_TASKS:
        out.append(f"torch_compile compiles the scorer of tasks {', '.join(COMPILED_TASKS)}; task: {cfg.task} "
                   "runs eagerly. Remove torch_compile (and torch_compile_backend / torch_compile_mode).")
    backend = cfg.torch_compile_backend or "inductor"
    if cfg.torch_compile_mode is not None and backend != "inductor":
        out.append(f"torch_compile_mode={cfg.torch_compile_mode!r} configures the inductor backend; "
                   f"torch_compile_backend={backend!r} ignores it. Remove one of them.")
    if cfg.use_cpu and (cfg.torch_compile_mode in CUDA_GRAPH_MODES or backend == "cudagraphs"):
        what = f"torch_compile_mode={cfg.torch_compile_mode!r}" if backend != "cudagraphs" else \
            "torch_compile_backend='cudagraphs'"
        out.append(f"{what} uses CUDA graphs, which do not exist on the CPU (use_cpu: true); use "
                   "torch_compile_mode: default or max-autotune-no-cudagraphs.")
    return out


def compile_scorer(scorer: torch.nn.Module, cfg) -> torch.nn.Module:
    """`scorer` under torch.compile with the config's backend and mode (TRL's defaults: inductor, mode default)."""
    kwargs = {"backend": cfg.torch_compile_backend} if cfg.torch_compile_backend is not None else {}
    if cfg.torch_compile_mode is not None:
        kwargs["mode"] = cfg.torch_compile_mode
    if hasattr(scorer, "_head_outside_graph"):  # LogProbScorer: its chunks of `chunk` positions, compiled alike
        from preflab.scoring.lm import _head_chunk

        scorer.compiled_head_chunk = torch.compile(_head_chunk, **kwargs)
    return torch.compile(scorer, **kwargs)


def _dynamic(tensor, dims) -> None:
    if isinstance(tensor, torch.Tensor):
        for d in dims:
            if d < tensor.dim():
                torch._dynamo.maybe_mark_dynamic(tensor, d)


def mark_layout_dynamic(layout) -> None:
    """Mark the per-batch sizes of `layout` (a LayoutBatch, on its device) dynamic for torch.compile: R and T of
    input_ids, attention_mask (2-D [R, T] or 4-D [R, 1, T, T]) and position_ids; N and L of the response grid; M of
    the gather plan (and the prompt plan's sizes, when one was built). maybe_mark_dynamic: a size dynamo must
    specialise stays static instead of raising."""
    for t in (layout.input_ids, layout.position_ids):
        _dynamic(t, (0, 1))
    _dynamic(layout.attention_mask, (0, 1) if layout.attention_mask.dim() == 2 else (0, 2, 3))
    for t in (layout.pred_index, layout.target_ids, layout.response_mask):
        _dynamic(t, (0, 1))
    if layout.gather is not None:
        for t in layout.gather:
            _dynamic(t, (0,))
    if layout.prompt_gather is not None:  # the "prompt_logps" need: M' prompt tokens, a [count, W] grid
        for t in layout.prompt_gather:
            _dynamic(t, tuple(range(t.dim())))


def before_compiled_call(layout, device, models=()) -> None:
    """Before a compiled scorer scores `layout` with `models` (policy, reference; None skipped): its sizes marked
    dynamic, and what the scorer decides once per model and keeps on it, computed eagerly here, outside the graph:
    the chunk budget of each model's LM head (preflab.scoring.chunking.chunk_budget_of: on a GPU it asks the
    driver for free memory, which dynamo cannot trace) and, for a right-padded layout, whether each model may drop
    the mask (models.attention.right_padding_needs_no_mask: a probe forward in eval mode, a graph break and an extra
    graph inside the trace). `device`: the layout's (the models' heads are read where they are)."""
    from preflab.models.attention import right_padding_needs_no_mask
    from preflab.scoring.chunking import chunk_budget_of
    from preflab.scoring.head import backbone_and_head

    for model in models:
        if model is None:
            continue
        chunk_budget_of(backbone_and_head(model)[1])
        if layout.causal_only:
            right_padding_needs_no_mask(model)
    mark_layout_dynamic(layout)


def graphs_compiled() -> int:
    """Graphs dynamo has compiled in this process so far (torch._dynamo.utils.counters)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])
