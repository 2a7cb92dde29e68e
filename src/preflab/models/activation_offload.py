"""activation_offloading (TRL's SFT / DPO / KTO / Reward config option): the tensors autograd saves for the backward
pass during a training forward are kept in CPU memory and brought back to their device when the backward needs them.

    with offload_saved_activations(modules):   # around each micro-batch's forward (preflab.loops.driver)
        out = forward(mb)                       # saved tensors: device -> CPU at pack time
    out.loss.backward()                         # CPU -> device at unpack time

Which tensors move (the rule of TRL's OffloadActivations, after torchtune's): every strided tensor saved for backward
of at least MIN_BYTES bytes, except the parameters and buffers of the trained modules (and views of them, found by
their storage): those stay where they are anyway, and a copy would only double them. A broadcast view (a stride 0)
stays too (TRL copies its storage; a copy of the view would materialise it). The host copy is contiguous, as
torch.autograd.graph.save_on_cpu's. The copy is exact (a copy of the
same dtype and values), so the loss and the gradients are bit for bit those of the run without it; on a GPU it trades
device memory for host memory and two copies per saved tensor (pinned host memory, so the copy back does not block
the host). On a CPU the tensors are already in host memory: they are still copied (the same path as on a GPU, so the
CPU tests exercise it), which costs time and saves nothing; the run says so once.

With gradient_checkpointing (non-reentrant, gradient_checkpointing_kwargs' default), the checkpointed layers save
their inputs through the checkpoint's own hooks, which take precedence inside them: what is offloaded is then what
autograd saves outside the checkpointed layers (embeddings, final norm, LM head chunks), as in TRL, which runs both
together. (Reentrant checkpointing saves each layer's inputs with save_for_backward, which these hooks offload too;
the gradients are the same.)

Deviation from TRL: no second CUDA stream and no forward stash (TRL overlaps its copies with compute; here each copy
runs on the compute stream), and the LM head's inputs are offloaded too (TRL keeps the output layer's). Refused under
FSDP and DeepSpeed (preflab.loops.driver): their parameters are gathered into temporary storages that this rule cannot
tell from activations, so a full copy of every gathered weight would go to the host.
"""
from __future__ import annotations

import torch

MIN_BYTES = 1024  # TRL's min_offload_size: smaller tensors are not worth a copy


class ActivationOffload:
    """The pack / unpack pair of torch.autograd.graph.saved_tensors_hooks (module docstring). `kept`: the storage
    pointers of the tensors that stay (the trained modules' parameters and buffers); `offloaded` counts the tensors
    moved (for the tests)."""

    def __init__(self, kept_tensors, min_bytes: int = MIN_BYTES):
        self.kept = {t.untyped_storage().data_ptr() for t in kept_tensors}
        self.min_bytes = min_bytes
        self.pin = torch.cuda.is_available()
        self.offloaded = 0

    def pack(self, tensor: torch.Tensor):
        if (tensor.layout != torch.strided or tensor.numel() * tensor.element_size() < self.min_bytes
                or 0 in tensor.stride() or tensor.untyped_storage().data_ptr() in self.kept):
            return tensor  # a broadcast view (stride 0) would be copied whole: it stays, as its small source does
        host = torch.empty(tensor.size(), dtype=tensor.dtype, pin_memory=self.pin and tensor.is_cuda)
        host.copy_(tensor)
        self.offloaded += 1
        return tensor.device, host

    @staticmethod
    def unpack(packed):
        if isinstance(packed, torch.Tensor):
            return packed
        device, host = packed
        return host.to(device, non_blocking=host.is_pinned())

    def hooks(self):
        """The context under which a forward's saved tensors are offloaded."""
        return torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)


def module_tensors(module: torch.nn.Module) -> list[torch.Tensor]:
    """A module's parameters and buffers (the tensors a forward reads but does not make)."""
    return [*module.parameters(), *module.buffers()]


def offloaded_forward(forward, kept_tensors):
    """`forward` (one micro-batch -> its output) with the tensors it saves for backward offloaded, all but
    `kept_tensors` and views of them (ActivationOffload); `.offload` is the ActivationOffload."""
    offload = ActivationOffload(kept_tensors)

    def run(mb):
        with offload.hooks():
            return forward(mb)

    run.offload = offload
    return run
