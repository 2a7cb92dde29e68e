"""Device-to-host syncs per optimizer step of a default offline DPO run (issue 17): at most 2 with logging off.

Every read of a device value on the host (`.item()`, `float(t)`, `bool(t)`, `.tolist()`), every op whose output
size depends on the data (`nonzero`, `masked_select`, boolean-mask `index` / `index_put`, `unique`,
`repeat_interleave` without output_size) stalls the host until the GPU has caught up. On CPU nothing stalls, but
the same ops run, so a TorchDispatchMode counts them; `.tolist()` reads memory without dispatching an op on CPU,
so it is counted by a patch of torch.Tensor.tolist. The optimizer's step post-hook is the step boundary.

The batch layout is built on the host from Python lists (preflab.data.layout) before it moves to the device:
`Trainer.micro_batches` is not counted, nor is `preflab.data.layout.padded` called inside a step (spo_degree's
variant layout), and reads of their tensors (or of tensors computed from them alone) are not syncs.
`LayoutBatch.to` returns new tensors here, as it does on a GPU, so the moved layout counts as device data.
"""
import contextlib
import dataclasses
import sys
import weakref
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

sys.path.insert(0, str(Path(__file__).parent / "loops"))
from tiny_run import synthetic_pairs  # noqa: E402

# aten op names (overload packets): a scalar read, or an output whose size only the data decides
SCALAR_READS = {"_local_scalar_dense", "is_nonzero", "item", "equal"}
DATA_SIZED = {"nonzero", "masked_select", "_unique", "_unique2", "unique_dim", "unique_consecutive", "argwhere",
              "masked_scatter_backward"}


def _bool_index(args) -> bool:
    indices = args[1] if len(args) > 1 else []
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in (indices or []))


def is_sync(func, args, kwargs) -> bool:
    name = func.overloadpacket.__name__
    if name in SCALAR_READS or name in DATA_SIZED:
        return True
    if name in ("index", "index_put", "index_put_", "_index_put_impl_"):
        return _bool_index(args)
    if name == "repeat_interleave":
        return kwargs.get("output_size") is None
    return False


def _called_from_transformers_models() -> bool:
    """Whether a frame of transformers' model code (transformers/models/..., transformers/masking_utils.py and the
    other helpers the models call) is on the stack: those syncs are the model's, not preflab's."""
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_code.co_filename.replace("\\", "/")
        if "/transformers/" in name and "/transformers/trainer" not in name:
            return True
        frame = frame.f_back
    return False


class HostTracking(TorchDispatchMode):
    """A dispatch mode that knows the host tensors: those marked (a batch as collated, in host memory on a GPU
    machine) and the outputs of ops whose tensor inputs are all host tensors. Tracked by identity in `host`
    (id -> weakref; a WeakSet would compare tensors with ==). `paused` (host_region): work the subclass leaves
    uncounted. The base of SyncCounter here and of benchmarks/op_count.py's OpCounter."""

    def __init__(self):
        super().__init__()
        self.host, self.paused = {}, False

    def is_host(self, t) -> bool:
        ref = self.host.get(id(t))
        return ref is not None and ref() is t

    def all_host(self, tensors) -> bool:
        """Are there tensors, all of them host tensors?"""
        return bool(tensors) and all(self.is_host(t) for t in tensors)

    def mark_host(self, obj) -> None:
        """Every tensor inside obj (see _tensors) is a host tensor."""
        self.host.update((id(t), weakref.ref(t)) for t in _tensors(obj))

    @contextlib.contextmanager
    def host_region(self):
        """Inside, `paused` is set: host work (the collation) that the subclass does not count."""
        before, self.paused = self.paused, True
        try:
            yield
        finally:
            self.paused = before

    @staticmethod
    def tensor_inputs(args, kwargs) -> list:
        return [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]


class SyncCounter(HostTracking):
    """Counts syncs into `counts[-1]`; a read of a host tensor is no sync on a GPU machine, so it is not counted."""

    def __init__(self):
        super().__init__()
        self.counts, self.names = [0], [[]]
        self.in_model = [0]  # of counts: syncs made inside transformers' own model code (a VLM's image merge)

    def hit(self, name, tensors=()):
        if self.paused or (tensors and all(self.is_host(t) for t in tensors)):
            return
        self.counts[-1] += 1
        self.names[-1].append(name)
        self.in_model[-1] += _called_from_transformers_models()

    def next_step(self, *args, **kwargs):
        self.counts.append(0)
        self.names.append([])
        self.in_model.append(0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = self.tensor_inputs(args, kwargs)
        out = func(*args, **kwargs)
        if self.all_host(tensors):
            self.mark_host(tree_flatten(out)[0])
        elif is_sync(func, args, kwargs):
            self.hit(str(func))
        return out


def _tensors(obj):
    """Every tensor inside obj (tensors, dataclass instances, named tuples, lists, tuples, dicts)."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from _tensors(getattr(obj, f.name))
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


def _fresh(obj):
    """What `.to(device)` gives on a GPU machine: new tensors (on CPU, .to("cpu") would return the same ones)."""
    if isinstance(obj, torch.Tensor):
        return obj.clone()
    if dataclasses.is_dataclass(obj):
        return dataclasses.replace(obj, **{f.name: _fresh(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                                           if f.init})
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(_fresh(x) for x in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_fresh(x) for x in obj)
    if isinstance(obj, dict):
        return {k: _fresh(v) for k, v in obj.items()}
    return obj


@contextlib.contextmanager
def counting(trainer_cls, monkeypatch):
    from preflab.data.layout import LayoutBatch

    counter = SyncCounter()
    original_tolist = torch.Tensor.tolist

    def tolist(self):
        counter.hit("Tensor.tolist", [self])
        return original_tolist(self)

    original_mb = trainer_cls.micro_batches

    def host_micro_batches(self, step):
        with counter.host_region():
            mbs = original_mb(self, step)
        counter.mark_host([mb.layout for mb in mbs])
        return mbs

    import preflab.data.layout as layout_module

    original_padded = layout_module.padded

    def host_padded(*args, **kwargs):  # from Python lists, in host memory (a step's extra forward: spo_degree)
        with counter.host_region():
            layout = original_padded(*args, **kwargs)
        counter.mark_host(layout)
        return layout

    original_to = LayoutBatch.to

    def to_device(self, device):
        with torch.utils._python_dispatch._disable_current_modes():
            return _fresh(original_to(self, device))

    original_init = trainer_cls._build_optimizer

    def build(self):
        original_init(self)
        inner = getattr(self.optimizer, "optimizer", self.optimizer)
        inner.register_step_post_hook(counter.next_step)

    monkeypatch.setattr(torch.Tensor, "tolist", tolist)
    monkeypatch.setattr(trainer_cls, "micro_batches", host_micro_batches)
    monkeypatch.setattr(trainer_cls, "_build_optimizer", build)
    monkeypatch.setattr(LayoutBatch, "to", to_device)
    monkeypatch.setattr(layout_module, "padded", host_padded)
    with counter:
        yield counter


def run_counted(tmp_path, monkeypatch, steps=5, data="synthetic", **overrides):
    """Syncs per optimizer step of a tiny offline run (steps 2..steps). data: "synthetic" (tiny_run's pairs) or the
    path of a pairs file (read by the trainer from `dataset_name`, tokenized with the tiny tokenizer)."""
    from preflab.config import config_from_dict
    from preflab.loops.offline import Trainer
    from preflab.models.load import frozen_copy
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

    torch.set_num_threads(1)
    monkeypatch.setenv("PREFLAB_CACHE_DIR", str(tmp_path / "ref-cache"))
    params = dict(model_name_or_path="builtin:tiny-llama", dataset_name=data, output_dir=str(tmp_path / "run"),
                  learning_rate=1e-3, per_device_train_batch_size=4, max_steps=steps, logging_steps=1000,
                  disable_tqdm=True, use_cpu=True)
    params.update(overrides)
    cfg = config_from_dict(params)
    tok = tiny_tokenizer()
    policy = tiny_causal_lm(tok, seed=0)
    if cfg.use_peft:
        from peft import LoraConfig, get_peft_model

        policy, ref = get_peft_model(policy, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])), None
    else:
        ref = frozen_copy(policy)
    with counting(Trainer, monkeypatch) as counter:
        train_data = synthetic_pairs() if data == "synthetic" else None
        summary = Trainer(cfg, policy=policy, ref=ref, tokenizer=tok, train_data=train_data).train()
    # counts[0]: setup and step 1 (first-call work); counts[k]: from step k's post-hook to step k+1's
    per_step = counter.counts[1:steps]
    run_counted.in_model = counter.in_model[1:steps]  # of per_step: inside transformers' model code
    return per_step, counter.names[1:steps], summary


def test_default_dpo_step_makes_at_most_two_syncs(tmp_path, monkeypatch):
    per_step, names, summary = run_counted(tmp_path, monkeypatch)
    assert summary["global_step"] == 5 and len(per_step) == 4
    assert max(per_step) <= 2, names
    assert per_step == [1] * 4, names  # the one read: non-finite flags, weight bound, grad norm, loss and metrics


def test_the_counter_sees_the_syncs_it_must(tmp_path, monkeypatch):
    """The counter is not blind: a boolean-mask index, an .item() and a .tolist() inside the step are counted."""
    from preflab.loops.offline import Trainer

    original = Trainer.forward

    def leaky(self, mb):
        out = original(self, mb)
        out.losses[out.losses > 0].sum().item()
        out.losses.tolist()
        return out

    monkeypatch.setattr(Trainer, "forward", leaky)
    per_step, names, _ = run_counted(tmp_path, monkeypatch, steps=3)
    assert all(c >= 4 for c in per_step), names  # index(bool) + item + tolist + the step's own read


LOUD_ECHO = str(Path(__file__).resolve().parents[1] / "examples" / "data" / "loud_echo_pairs.jsonl")
# the configurations users run, each on the default (prefix-shared) layout unless it names another
USER_CONFIGS = {
    "precomputed_reference": dict(precompute_ref_log_probs=True),
    "accumulation": dict(per_device_train_batch_size=2, gradient_accumulation_steps=2),
    "lora": dict(use_peft=True),
    "lora_precomputed_reference": dict(use_peft=True, precompute_ref_log_probs=True),
    "weighted_sum": dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5]),
    "prefix_packed": dict(layout="prefix_packed"),
    # the GPU start of docs/performance.md (bf16 autocast, rows bucketed to 64), with and without the reference
    # precomputed, and an LM head in several checkpointed chunks (a GPU-sized chunk over a 128k-152k vocabulary)
    "gpu_start": dict(bf16=True, pad_to_multiple_of=64),
    "gpu_start_precomputed_reference": dict(bf16=True, pad_to_multiple_of=64, precompute_ref_log_probs=True),
    "several_head_chunks": dict(chunk_tokens=8),
    # the degree variants' own forward (hidden_only) and head in every micro-batch: the loud-echo pairs have
    # three words per response, degrees 0..2
    "spo_degree": dict(data=LOUD_ECHO, max_length=128, loss_type="spo_degree",
                       objective_params={"degrees": 2, "degree_weight": 1.0}),
    "spo_degree_accumulation": dict(data=LOUD_ECHO, max_length=128, loss_type=["ipo", "spo_degree"],
                                    per_device_train_batch_size=2, gradient_accumulation_steps=2),
}


@pytest.mark.parametrize("name", sorted(USER_CONFIGS))
def test_user_configuration_steps_read_the_device_once(tmp_path, monkeypatch, name):
    """Every configuration users run keeps the default step's one read per optimizer step (logging off): the
    reference precomputed, accumulation, LoRA (its reference is the adapter-disabled policy), a weighted sum of
    losses, the packed prefix-shared layout, the GPU start (bf16, bucketed rows), an LM head in several chunks,
    spo_degree's variant forward and degree head.

    spo_degree's variants go through one more policy forward per micro-batch, in the padded layout without a mask
    (plain causal attention); transformers then looks for packed sequences in the position ids with one `.all()`
    per forward (masking_utils.find_packed_sequence_indices, skipped under torch.compile), as in the padded
    layout's test below: 1 sync per micro-batch inside the model's code, 0 in preflab's (its variant layout and
    index lists are built on the host)."""
    per_step, names, summary = run_counted(tmp_path, monkeypatch, steps=4, **USER_CONFIGS[name])
    assert summary["global_step"] == 4
    in_model = run_counted.in_model
    micro_batches = USER_CONFIGS[name].get("gradient_accumulation_steps", 1)
    expected_in_model = micro_batches if name.startswith("spo_degree") else 0
    assert in_model == [expected_in_model] * 3, names
    assert [total - model for total, model in zip(per_step, in_model)] == [1] * 3, names


def test_packed_layout_stays_within_two_syncs(tmp_path, monkeypatch):
    per_step, names, _ = run_counted(tmp_path, monkeypatch, steps=3, layout="packed")
    assert per_step == [1, 1], names


def test_padded_layout_syncs_only_in_the_models_packed_sequence_check(tmp_path, monkeypatch):
    """The padded layout runs plain causal attention (no mask: the fused causal kernels); transformers then looks
    for packed sequences in the position ids with one `.all()` per forward (masking_utils.find_packed_sequence_indices,
    skipped under torch.compile): policy + reference = 2, plus the step's own read. The old 2-D padding mask cost
    two reads per forward."""
    per_step, names, _ = run_counted(tmp_path, monkeypatch, steps=3, layout="padded")
    assert per_step == [3, 3], names
    per_step, names, _ = run_counted(tmp_path / "pre", monkeypatch, steps=3, layout="padded",
                                     precompute_ref_log_probs=True)
    assert per_step == [2, 2], names


def test_layout_moves_to_an_accelerator_without_blocking(monkeypatch):
    """A blocking host -> GPU copy synchronizes the stream (waits for all queued work): LayoutBatch.to copies
    asynchronously. Checked with the meta device, which stands in for an accelerator on a CPU machine."""
    from preflab.data.prefix import prefix_shared

    layout = prefix_shared(synthetic_pairs(n=3), pad_id=0)
    calls = []
    original = torch.Tensor.to

    def spy(self, *args, **kwargs):
        calls.append(kwargs.get("non_blocking", False))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", spy)
    moved = layout.to("meta")
    assert moved.input_ids.device.type == "meta" and moved.gather.slot.device.type == "meta"
    assert len(calls) >= 8 and all(calls)
    calls.clear()
    layout.to("cpu")  # host to host: a plain (blocking) call
    assert not any(calls)


def _count_vlm_steps(tmp_path, monkeypatch, **overrides):
    """Syncs of VLM DPO steps 2-4 (task: vlm, tiny LLaVA, logging off): (total, inside the model's code, names)."""
    sys.path.insert(0, str(Path(__file__).parent / "vlm"))
    from vlm_helpers import pair_row, tiny

    from preflab.config import config_from_dict
    from preflab.data.vision import read_vision_pairs, tokenize_vision_pairs
    from preflab.loops.vlm import VisionTrainer
    from preflab.models.load import frozen_copy
    from preflab.scoring.vlm import VisionLayout

    torch.set_num_threads(1)
    model, processor = tiny("llava")
    rows = [pair_row("what colour?", f"it is c{i}", f"it is d{i}", (40 * i, 100, 20), seed=i) for i in range(4)]
    pairs, _, _ = tokenize_vision_pairs(read_vision_pairs(rows)[0], processor)
    cfg = config_from_dict(dict(task="vlm", model_name_or_path="builtin:tiny-llava", dataset_name="unused",
                                output_dir=str(tmp_path), per_device_train_batch_size=2, learning_rate=1e-3,
                                max_steps=4, logging_steps=1000, disable_tqdm=True, report_to="none", use_cpu=True,
                                **overrides))
    original_to = VisionLayout.to

    def to_device(self, device):  # the vision tensors too are new device tensors, as on a GPU
        with torch.utils._python_dispatch._disable_current_modes():
            return _fresh(original_to(self, device))

    monkeypatch.setattr(VisionLayout, "to", to_device)
    with counting(VisionTrainer, monkeypatch) as counter:
        trainer = VisionTrainer(cfg, policy=model, ref=frozen_copy(model), processor=processor, train_data=pairs)
        trainer.train()
    return counter.counts[1:4], counter.in_model[1:4], counter.names[1:4], trainer


def test_vlm_dpo_step_makes_at_most_two_syncs_outside_the_model(tmp_path, monkeypatch):
    """A VLM DPO step (task: vlm, tiny LLaVA, logging off): preflab's scorer gathers the response positions by the
    layout's host-built indices (no boolean mask), so preflab reads the device once per step (the step's own read).
    Outside the model's forward code the step makes 2 syncs: that read and the backward of LLaVA's image-feature
    merge (`inputs_embeds.masked_scatter`, run by the autograd engine, so no model frame is on the stack).
    Inside it LLaVA checks the image-token count (`torch._check_with` + the tensor formatted into its message:
    2 per forward, policy and reference): 4, pinned so that a change on either side shows. The old scorer's
    boolean-mask indexing cost 2 more per forward (`pred_index[mask]`, `target_ids[mask]`)."""
    total, in_model, names, _ = _count_vlm_steps(tmp_path, monkeypatch)
    outside_model = [t - m for t, m in zip(total, in_model)]
    assert outside_model == [2] * 3, names
    assert all(n[-2:] == ["aten.masked_scatter_backward.default", "Tensor.tolist"] for n in names)
    assert in_model == [4] * 3, names


def test_cat_adpo_step_syncs_no_more_than_the_vlm_dpo_step(tmp_path, monkeypatch):
    """CAT-ADPO's step (DPO with the clue aggregator in front of the language model): the aggregator rewrites all
    rows by the layout's host-built CluePlan (index lists, no boolean mask), so the step makes exactly the VLM DPO
    step's syncs (2 outside the model's code, 4 inside): 6. The old per-row rewrite made 19 per step with 2 rows
    (measured): 3 `.any()` reads, 4 boolean-mask gathers and their 4 backward index_puts, 2 masked_scatter
    backwards."""
    total, in_model, names, trainer = _count_vlm_steps(tmp_path, monkeypatch, clue_aggregator=True)
    assert trainer.policy.clue_aggregator.out.weight.abs().sum() > 0  # the aggregator trained in these steps
    outside_model = [t - m for t, m in zip(total, in_model)]
    assert outside_model == [2] * 3, names
    assert all(n[-2:] == ["aten.masked_scatter_backward.default", "Tensor.tolist"] for n in names)
    assert in_model == [4] * 3, names


def test_spo_degree_head_copies_to_the_device_without_blocking(tmp_path, monkeypatch):
    """spo_degree's extras (preflab.loops.degree_head) move their host-built index lists and labels with
    preflab.data.layout.to_device (non_blocking on an accelerator): a blocking host -> GPU copy
    (`torch.tensor(..., device=cuda)`, `.to(cuda)`) waits for all queued GPU work, once per tensor. Counted per
    micro-batch: copies the degree head makes itself (blocking) and through to_device. The old code made 3 blocking
    copies (the head's row and slot index lists, the labels)."""
    import preflab.data.layout as layout_module
    from preflab.config import config_from_dict
    from preflab.loops.offline import Trainer
    from preflab.models.load import frozen_copy
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

    torch.set_num_threads(1)
    cfg = config_from_dict(dict(model_name_or_path="builtin:tiny-llama", dataset_name=LOUD_ECHO, max_length=128,
                                output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=1,
                                disable_tqdm=True, use_cpu=True, loss_type="spo_degree",
                                objective_params={"degrees": 2, "degree_weight": 1.0}))
    tok = tiny_tokenizer()
    policy = tiny_causal_lm(tok, seed=0)
    trainer = Trainer(cfg, policy=policy, ref=frozen_copy(policy), tokenizer=tok)
    mb = trainer.micro_batches(0)[0]
    copies = {"blocking": 0, "to_device": 0}

    def from_degree_head() -> bool:
        return sys._getframe(2).f_code.co_filename.replace("\\", "/").endswith("preflab/loops/degree_head.py")

    original_tensor, original_to, original_to_device = torch.tensor, torch.Tensor.to, layout_module.to_device

    def tensor(*args, **kwargs):
        copies["blocking"] += from_degree_head() and kwargs.get("device") is not None
        return original_tensor(*args, **kwargs)

    def to(self, *args, **kwargs):  # a call naming a device (a dtype cast copies nothing across)
        names_device = any(isinstance(a, (str, torch.device)) for a in (*args, kwargs.get("device")))
        copies["blocking"] += from_degree_head() and names_device and not kwargs.get("non_blocking", False)
        return original_to(self, *args, **kwargs)

    def to_device(t, device):
        copies["to_device"] += from_degree_head()
        return original_to_device(t, device)

    monkeypatch.setattr(torch, "tensor", tensor)
    monkeypatch.setattr(torch.Tensor, "to", to)
    monkeypatch.setattr(layout_module, "to_device", to_device)
    out = trainer.forward(mb)
    monkeypatch.undo()
    assert out.metrics["loss/degree"].item() > 0  # the degree head ran
    assert copies == {"blocking": 0, "to_device": 3}
