"""Reference log-probs computed once per (reference model, tokenized dataset) and cached on disk as safetensors.

DPO's loss needs log pi_ref(y | x) for every chosen and rejected response (Rafailov et al. 2023, arXiv:2305.18290,
Eq. 7). The reference is frozen, so these values depend only on the reference weights and the token ids (vision
pairs: and the processor's pixel tensors, which the key then includes, preflab.data.vision.vision_pairs_fingerprint);
computing them once before training removes the reference forward from every step (and the reference weights from
memory).

    cache = reference_cache(score_fn, pairs, key=cache_key(ref_model, pairs, settings), cache_dir=..., ...)
    ref_scores = cache.scores(dataset_positions, layout.response_mask)    # Scores in the batch's sequence order

The file `ref-logps-<key>.safetensors` holds, for chosen and rejected separately, the per-token log-probs of all
responses concatenated in dataset order plus offsets (unpaired KTO examples: "chosen" is the completion, "rejected"
the example's fixed mismatched completion, the two halves of their layout, preflab.data.mismatched; objectives
without KTO's reference point lay out the completions only and "rejected" stays empty); the metadata repeats the full key, so a mismatched or damaged
file is a miss (and is rewritten atomically). Values are looked up by dataset position, never by batch position, so
shuffling, resuming and several processes all read each row's own values. Under several processes each rank scores
the positions `rank::world`, the results are gathered, and the main process writes the file.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from preflab.atomic_file import write_atomically
from preflab.rank_agreement import ranks_agree
from preflab.scoring.lm import Scores

CACHE_FORMAT = 2  # 2: sliding-window models (Mistral, Phi-3, ...) are no longer scored with a custom 4-D mask,
# so reference log-probs cached before may be wrong for them (models.attention.binding_sliding_window)


def default_cache_dir() -> Path:
    """$PREFLAB_CACHE_DIR, else $XDG_CACHE_HOME/preflab, else ~/.cache/preflab."""
    if os.environ.get("PREFLAB_CACHE_DIR"):
        return Path(os.environ["PREFLAB_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "preflab"


def model_fingerprint(model: torch.nn.Module, skip_adapters: bool = False) -> str:
    """sha256 over every parameter and buffer (name, dtype, shape, bytes). skip_adapters drops LoRA tensors (the
    reference of a LoRA policy is its base model)."""
    h = hashlib.sha256(type(model).__name__.encode())
    for name, tensor in sorted(model.state_dict().items()):
        if skip_adapters and "lora_" in name:
            continue
        if hasattr(tensor, "full_tensor"):  # FSDP2 shard: the whole tensor (collective; every rank hashes alike)
            tensor = tensor.full_tensor()
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def pairs_fingerprint(pairs) -> str:
    """sha256 over (prompt_ids, chosen_ids, rejected_ids) of every pair, in dataset order; a MAPL intra row (its own
    rejected_prompt_ids) adds those."""
    h = hashlib.sha256()
    for p in pairs:
        own = getattr(p, "rejected_prompt_ids", None)
        key = (p.prompt_ids, p.chosen_ids, p.rejected_ids) + (() if own is None else (own,))
        h.update(repr(key).encode())
    return h.hexdigest()


def cache_key(model_hash: str, pairs, settings: dict, fingerprint: Callable = pairs_fingerprint) -> str:
    """The cache key: format, reference weights, the pairs' `fingerprint` (token ids; for vision pairs also the
    processor's pixel tensors, preflab.data.vision.vision_pairs_fingerprint) and scoring settings (precision,
    device type)."""
    blob = repr((CACHE_FORMAT, model_hash, fingerprint(pairs), sorted(settings.items())))
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class RefLogps:
    """Per-token reference log-probs of every pair, by dataset position: chosen[i] [C_i], rejected[i] [R_i]."""

    chosen: list[Tensor]
    rejected: list[Tensor]

    def scores(self, positions: list[int], mask: Tensor, device=None, device_mask: Tensor | None = None) -> Scores:
        """Scores of the sequences [chosen_i.., rejected_i..] for dataset `positions`, laid out in `mask` [2B, L]
        ([B, L] and chosen only for a layout of one sequence per position) (the batch's response mask: sequence n's tokens in its first columns). Pass the host layout's mask and the
        training `device`: the lengths are checked and the grid is built on the host, then moved (no device read;
        one host -> device copy). device_mask: the same mask already on `device` (the moved layout's), used as the
        Scores' mask instead of a second copy."""
        values = [self.chosen[i] for i in positions]
        if mask.shape[0] != len(positions):  # two sequences per position (one: unpaired completions only)
            values += [self.rejected[i] for i in positions]
        lengths = mask.sum(-1).tolist()
        if [v.numel() for v in values] != lengths:
            raise ValueError("cached reference log-probs do not match the batch's response lengths; the cache "
                             "belongs to other token ids (delete it or check the dataset positions).")
        flat = torch.cat(values) if values else mask.new_zeros(0, dtype=torch.float32)
        if flat.device != mask.device:
            flat = flat.to(mask.device)
        token_logps = mask.new_zeros(mask.shape, dtype=flat.dtype).masked_scatter(mask, flat)
        if device is not None:
            from preflab.data.layout import to_device

            token_logps = to_device(token_logps, device)
            mask = device_mask if device_mask is not None else to_device(mask, device)
        return Scores(token_logps, mask)


def score_rows(score_fn: Callable, pairs, collate: Callable, batch_size: int, rank: int = 0,
               world: int = 1, lockstep: bool = False) -> list[tuple[int, list[float], list[float]]]:
    """(position, chosen token log-probs, rejected token log-probs) for this rank's positions rank::world, scored
    with `score_fn(layout) -> Scores` (no grad) in batches of `batch_size` built by `collate(pairs)`.
    lockstep: every rank runs as many forwards as rank 0 (which has the most positions), re-scoring its last batch
    (results dropped) when it has fewer: a sharded (FSDP2) reference gathers its weights in every forward, a
    collective all ranks must join."""
    mine = list(range(rank, len(pairs), world))
    forwards = -(-len(range(0, len(pairs), world)) // batch_size) if lockstep else -(-len(mine) // batch_size)
    rows = []
    with torch.no_grad():
        for start in range(0, forwards * batch_size, batch_size):
            index = mine[start:start + batch_size]
            if not index:  # lockstep padding: the same forward on pairs already scored (or any pair), dropped
                score_fn(collate([pairs[i] for i in (mine[-batch_size:] or [0])]))
                continue
            scores = score_fn(collate([pairs[i] for i in index]))
            lp, mask = scores.token_logps.float().cpu(), scores.mask.cpu()
            b = len(index)
            one_sequence = lp.shape[0] == b  # unpaired examples without a mismatched completion: no second half
            for k, i in enumerate(index):
                rows.append((i, lp[k][mask[k]].tolist(), [] if one_sequence else lp[b + k][mask[b + k]].tolist()))
    return rows


def assemble(rows, num_pairs: int) -> RefLogps:
    """RefLogps by dataset position from all ranks' rows; every position exactly once."""
    by_pos = {}
    for i, chosen, rejected in rows:
        if i in by_pos:
            raise RuntimeError(f"reference scoring returned row {i} twice.")
        by_pos[i] = (chosen, rejected)
    if sorted(by_pos) != list(range(num_pairs)):
        raise RuntimeError(f"reference scoring returned {len(by_pos)} of {num_pairs} rows.")
    return RefLogps([torch.tensor(by_pos[i][0], dtype=torch.float32) for i in range(num_pairs)],
                    [torch.tensor(by_pos[i][1], dtype=torch.float32) for i in range(num_pairs)])


def compute_ref_logps(score_fn: Callable, pairs, collate: Callable, batch_size: int, rank: int = 0, world: int = 1,
                      gather: Callable | None = None, lockstep: bool = False) -> RefLogps:
    """Score every pair: this rank its share (score_rows), `gather(list) -> list` joins all ranks' rows."""
    rows = score_rows(score_fn, pairs, collate, batch_size, rank, world, lockstep)
    return assemble(gather(rows) if world > 1 else rows, len(pairs))


def _flat(parts: list[Tensor]) -> tuple[Tensor, Tensor]:
    offsets = torch.zeros(len(parts) + 1, dtype=torch.long)
    offsets[1:] = torch.tensor([p.numel() for p in parts], dtype=torch.long).cumsum(0)
    return (torch.cat(parts) if parts else torch.zeros(0)), offsets


def save_ref_logps(path: Path, cache: RefLogps, key: str) -> None:
    """Write atomically (temp file in the same folder, then rename)."""
    from safetensors.torch import save_file

    chosen, chosen_off = _flat(cache.chosen)
    rejected, rejected_off = _flat(cache.rejected)
    write_atomically(path, lambda tmp: save_file(
        {"chosen": chosen, "chosen_offsets": chosen_off, "rejected": rejected, "rejected_offsets": rejected_off}, tmp,
        metadata={"format": str(CACHE_FORMAT), "key": key}))


def load_ref_logps(path: Path, key: str, num_pairs: int) -> RefLogps | None:
    """The cached values, or None when the file is missing, damaged or for another key."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != str(CACHE_FORMAT) or meta.get("key") != key:
                return None
            t = {name: f.get_tensor(name) for name in ("chosen", "chosen_offsets", "rejected", "rejected_offsets")}
    except Exception:  # noqa: BLE001 - any unreadable file is a cache miss
        return None
    out = []
    for side in ("chosen", "rejected"):
        off = t[f"{side}_offsets"].tolist()
        if len(off) != num_pairs + 1 or off[-1] != t[side].numel():
            return None
        out.append([t[side][off[i]:off[i + 1]].clone() for i in range(num_pairs)])
    return RefLogps(*out)


def reference_cache(score_fn: Callable, pairs, collate: Callable, batch_size: int, key: str,
                    cache_dir: str | os.PathLike, rank: int = 0, world: int = 1, gather: Callable | None = None,
                    lockstep: bool = False) -> tuple[RefLogps, Path, bool]:
    """(values, file, hit): load the file for `key`, or compute (sharded over ranks), write it (main rank), return.
    The other ranks wait for the write through preflab.rank_agreement.ranks_agree: a failed write (a full disk)
    stops every rank with the same error naming the file, where a barrier left them waiting."""
    path = Path(cache_dir) / f"ref-logps-{key[:32]}.safetensors"
    hit = load_ref_logps(path, key, len(pairs))
    if world > 1 and not all(gather([hit is not None])):
        hit = None  # every rank computes (and gathers) together, or none does
    if hit is not None:
        return hit, path, True
    values = compute_ref_logps(score_fn, pairs, collate, batch_size, rank, world, gather, lockstep)
    with ranks_agree(f"could not write the reference log-prob cache {path}"):
        if rank == 0:
            save_ref_logps(path, values, key)
    return values, path, False


def precompute_reference(score_fn: Callable, ref_model: torch.nn.Module, adapters_off: bool, splits: dict,
                         collate: Callable, accelerator, settings: dict,
                         cache_dir: str | os.PathLike | None = None,
                         fingerprint: Callable = pairs_fingerprint) -> tuple[dict[str, RefLogps], dict]:
    """Cached reference log-probs for each split {name: (pairs, batch_size)} (empty splits skipped), sharded over
    the accelerator's processes; `fingerprint(pairs)` is what identifies the reference's inputs in the key (see
    cache_key). Returns ({name: RefLogps}, {name: {"file", "hit"}})."""
    from accelerate.utils import gather_object

    model_hash = model_fingerprint(ref_model, skip_adapters=adapters_off)
    world, rank = accelerator.num_processes, accelerator.process_index
    out, info = {}, {}
    for name, (pairs, batch_size) in splits.items():
        if not pairs:
            continue
        key = cache_key(model_hash, pairs, settings, fingerprint)
        out[name], path, hit = reference_cache(score_fn, pairs, collate, batch_size, key,
                                               cache_dir or default_cache_dir(), rank, world, gather_object,
                                               lockstep=bool(getattr(accelerator, "is_fsdp2", False)))
        info[name] = {"file": str(path), "hit": hit}
    return out, info
