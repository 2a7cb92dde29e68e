"""Tool rollouts for online runs: sample, execute every closed tool call, append its observation, keep sampling.

    box = ToolBox([Calculator()])
    gen = ToolRolloutGenerator(policy, tokenizer, box, [ToolSyntax("[calc:", "]", "Calculator", "expression")],
                               max_new_tokens=48, max_tool_calls=3)
    ids = gen.generate(prompt_ids, num_generations=8, seed=1234)   # as online.generator's generators
    gen.last_columns     # per completion: {"num_tool_calls": executed calls, "tool_errors": failed ones}
    gen.last_loss_masks  # per completion: 1 on tokens the model wrote, 0 on observation tokens

A completion is sampled token by token (one KV-cached forward per step for the whole batch). Whenever the text the
model wrote since the last observation contains a complete call `<open> argument <close>` (e.g. `[calc: 37*48]`),
the argument string goes to `ToolBox.call(tool, {argument: text})` and the tokens of `prefix + observation` (e.g.
`=1776`) are forced into the completion, one per step, before sampling resumes; a failing call (bad expression,
forbidden construct, huge power, a call past the ToolBox's timeout_s) yields the ToolBox's fixed error observation
and is counted (`tools/errors`; timeouts also in `tools/timeouts`). Nothing is eval'd:
what runs is the tool's own code (the Calculator parses with `ast`). At most `max_tool_calls` calls per completion
are executed; a call closed after that gets no observation and is not counted (`tool_calls_refused` in
`last_metrics`). The completion budget `max_new_tokens` counts model and observation tokens together; a completion
ends at the first eos the model samples (kept) or at the budget.

Only executed calls count (`num_tool_calls`, the column preflab.verifiers.otc reads): a malformed tag is text, not a
call (the OTC spec's gotcha). Observation tokens are conditioned on but not trained on: OnlineRun puts
`last_loss_masks` into each Example's `loss_mask` (as TRL's GRPO masks tool results out of the loss).

Determinism: prompts are cut into chunks of `batch_size` prompts; chunk c is sampled with a torch.Generator seeded by
seed + c, so the completions depend on (seed, prompts, weights) only. Every process samples every chunk (no gather;
the same completions everywhere), and the processes agree on a failure after (generate). do_sample=False decodes greedily (evaluation).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from preflab.errors import ConfigError
from preflab.rank_agreement import ranks_agree
from preflab.tools.base import ToolBox


@dataclass(frozen=True)
class ToolSyntax:
    """How a completion calls one tool: `open` + argument text + `close`; the observation is `prefix` + result."""
    open: str              # "[calc:"
    close: str             # "]"
    tool: str              # the ToolBox name, "Calculator"
    argument: str          # the tool's (single string) argument, "expression"
    prefix: str = "="      # written before the observation

    def find(self, text: str) -> tuple[int, str] | None:
        """(end of the first complete call in text, its stripped argument), or None."""
        start = text.find(self.open)
        if start < 0:
            return None
        stop = text.find(self.close, start + len(self.open))
        if stop < 0:
            return None
        return stop + len(self.close), text[start + len(self.open):stop].strip()


CALCULATOR_SYNTAX = ToolSyntax("[calc:", "]", "Calculator", "expression")


def _top_p(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    if top_p >= 1.0:
        return probs
    sorted_p, order = probs.sort(-1, descending=True)
    drop = sorted_p.cumsum(-1) - sorted_p > top_p          # keep the smallest prefix with mass >= top_p
    sorted_p = sorted_p.masked_fill(drop, 0.0)
    return torch.zeros_like(probs).scatter(-1, order, sorted_p)


class ToolRolloutGenerator:
    def __init__(self, model, tokenizer, toolbox: ToolBox, syntaxes: list[ToolSyntax], max_new_tokens: int,
                 max_tool_calls: int = 3, temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 64):
        if not syntaxes:
            raise ConfigError("ToolRolloutGenerator needs at least one ToolSyntax.")
        for s in syntaxes:
            if s.tool not in toolbox.tools:
                raise ConfigError(f"tool syntax {s.open!r} names tool {s.tool!r}, which the ToolBox does not have "
                                  f"(it has {sorted(toolbox.tools)}).")
        if max_tool_calls < 0 or max_new_tokens < 1:
            raise ConfigError(f"need max_tool_calls >= 0 and max_new_tokens >= 1, got {max_tool_calls}, "
                              f"{max_new_tokens}.")
        self.model, self.tokenizer, self.toolbox, self.syntaxes = model, tokenizer, toolbox, list(syntaxes)
        self.max_new_tokens, self.max_tool_calls = max_new_tokens, max_tool_calls
        self.temperature, self.top_p, self.batch_size = temperature, top_p, batch_size
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self.last_columns: list[dict] = []
        self.last_loss_masks: list[list[int]] = []
        self.last_metrics: dict = {}
        self._closing: dict[int, bool] = {}  # token id -> its text holds the last character of a closing string

    def generate(self, prompt_ids: list[list[int]], num_generations: int, seed: int,
                 do_sample: bool = True) -> list[list[int]]:
        """num_generations completions per prompt, group-major; per-completion columns and loss masks are left in
        last_columns / last_loss_masks, round totals in last_metrics. Several processes: each samples every chunk on
        its own, then the processes agree (preflab.rank_agreement.ranks_agree, one all-reduce of a failure flag): a
        failure on one process (an out-of-memory sample on its device) stops every process with that process's
        error, where the others used to go on alone into the round's next collective and wait there."""
        ids, masks, columns = [], [], []
        refused, timeouts = 0, self.toolbox.stats["timeouts"]
        with ranks_agree("the tool rollouts failed"):
            for c in range(0, len(prompt_ids), self.batch_size):
                repeated = [p for p in prompt_ids[c:c + self.batch_size] for _ in range(num_generations)]
                gen = torch.Generator().manual_seed(seed + c // self.batch_size)
                out = self._chunk(repeated, gen, do_sample)
                ids += out[0]
                masks += out[1]
                columns += out[2]
                refused += out[3]
        self.last_columns, self.last_loss_masks = columns, masks
        n = max(1, len(columns))
        calls, errors = sum(c["num_tool_calls"] for c in columns), sum(c["tool_errors"] for c in columns)
        # TRL 1.16 GRPOTrainer's names too (_generate: tool_call_count / completions, and tool_failure_count /
        # tool_call_count, 0 without calls; its counts include failed calls, as num_tool_calls does)
        self.last_metrics = {"tools/calls_mean": calls / n, "tools/errors": float(errors),
                             "tools/calls_refused": float(refused), "tools/call_frequency": calls / n,
                             "tools/failure_frequency": errors / calls if calls else 0.0,
                             # calls past the ToolBox's timeout_s (part of tools/errors: the model saw the error text)
                             "tools/timeouts": float(self.toolbox.stats["timeouts"] - timeouts)}
        return ids

    @torch.no_grad()
    def _chunk(self, prompts: list[list[int]], gen: torch.Generator, do_sample: bool):
        model = self.model
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        B, width = len(prompts), max(len(p) for p in prompts)
        ids = torch.full((B, width), self.pad_id, dtype=torch.long)
        attn = torch.zeros((B, width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p)
            attn[i, width - len(p):] = 1
        position = (attn.cumsum(-1) - 1).clamp_min(0)
        completions: list[list[int]] = [[] for _ in range(B)]
        masks: list[list[int]] = [[] for _ in range(B)]
        forced: list[list[int]] = [[] for _ in range(B)]
        scanned = [0] * B          # characters of the completion text already searched for calls
        calls, errors, refused = [0] * B, [0] * B, 0
        done = [False] * B
        attn, next_pos = attn.to(device), position[:, -1].to(device) + 1
        # transformers >= 5.2x names the KV cache `cache` (past_key_values is deprecated); older models: past_key_values
        cache_name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        out = model(input_ids=ids.to(device), attention_mask=attn, position_ids=position.to(device), use_cache=True)
        for _ in range(self.max_new_tokens):
            logits = out["logits"][:, -1, :].float().cpu()
            if do_sample:
                probs = _top_p(torch.softmax(logits / self.temperature, -1), self.top_p)
                sampled = torch.multinomial(probs, 1, generator=gen).squeeze(-1).tolist()
            else:
                sampled = logits.argmax(-1).tolist()
            step = []
            for i in range(B):
                if done[i]:
                    step.append(self.pad_id)
                    continue
                if forced[i]:
                    tok, own = forced[i].pop(0), 0
                    if not forced[i]:  # the observation is in: search for calls after it
                        scanned[i] = len(self.tokenizer.decode(completions[i] + [tok], skip_special_tokens=True))
                else:
                    tok, own = sampled[i], 1
                completions[i].append(tok)
                masks[i].append(own)
                step.append(tok)
                if own and tok == self.eos_id:
                    done[i] = True
                elif own and self._may_close(tok):
                    refused += self._maybe_call(i, completions, forced, scanned, calls, errors)
                if len(completions[i]) >= self.max_new_tokens:
                    done[i] = True
            if all(done):
                break
            live = torch.tensor([[0 if d else 1] for d in done], dtype=torch.long, device=device)
            attn = torch.cat([attn, live], -1)
            out = model(input_ids=torch.tensor(step, device=device).unsqueeze(-1), attention_mask=attn,
                        position_ids=next_pos.unsqueeze(-1), use_cache=True, **{cache_name: out[cache_name]})
            next_pos = next_pos + 1
        model.train(was_training)
        columns = [{"num_tool_calls": m, "tool_errors": e} for m, e in zip(calls, errors)]
        return completions, masks, columns, refused

    def _may_close(self, tok: int) -> bool:
        if tok not in self._closing:
            piece = self.tokenizer.decode([tok], skip_special_tokens=True)
            self._closing[tok] = any(s.close[-1] in piece for s in self.syntaxes)
        return self._closing[tok]

    def _maybe_call(self, i, completions, forced, scanned, calls, errors) -> int:
        """Execute the call completion i just closed, if any; queue its observation. Returns 1 if refused."""
        text = self.tokenizer.decode(completions[i], skip_special_tokens=True)
        if not any(s.close in text[scanned[i]:] for s in self.syntaxes):
            return 0
        found = [(hit, s) for s in self.syntaxes if (hit := s.find(text[scanned[i]:])) is not None]
        if not found:
            return 0
        (end, argument), syntax = min(found, key=lambda f: f[0][0])
        if calls[i] >= self.max_tool_calls:
            scanned[i] += end
            return 1
        result = self.toolbox.call(syntax.tool, {syntax.argument: argument})
        calls[i] += 1
        errors[i] += 0 if result.ok else 1
        observation = syntax.prefix + result.observation
        forced[i].extend(self.tokenizer(observation, add_special_tokens=False).input_ids)
        scanned[i] = len(text)
        return 0
