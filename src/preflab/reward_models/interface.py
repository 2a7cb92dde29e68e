"""The judge interface online loops use: reward functions score, preference models prefer.

    judge = load_judge("outputs/rm")                      # RewardModel (BT head) or GPMPreference (GPM head)
    judge.score(prompts, responses)      -> Tensor [N]     reward r(x, y)               (RewardFunction)
    pm.prefer(prompts, a, b)             -> Tensor [N]     P(a > b | x) in [0, 1]        (PreferenceModel)
    pm.win_rate_matrix(prompt, [y_1..y_K]) -> Tensor [K, K]  P[i, j] = P(y_i > y_j | x), P + P^T = 1

Every PreferenceModel here satisfies P(a > b) + P(b > a) = 1 and P(a > a) = 1/2: BT- and GPM-induced ones by
construction (skew-symmetric logits), an order-sensitive judge g through the symmetrisation
P_sym(a > b) = (g(a, b) + 1 - g(b, a)) / 2 (library choice, models-and-loops.md B0.2). BT and GPM need K forward
passes for a K x K matrix; a pairwise judge needs K(K - 1).
Texts are tokenized exactly as in training (`tokenize_unpaired` with joint_only: bos + the ids of prompt + response
as one text + eos, TRL RewardTrainer's); a model trained
with contexts takes `contexts=` (rendered with the template stored in its config).
"""
from __future__ import annotations

from typing import Callable, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor, nn

from preflab.data.examples import Text, UnpairedExample
from preflab.errors import ConfigError


@runtime_checkable
class RewardFunction(Protocol):
    def score(self, prompts: Sequence[Text], responses: Sequence[Text]) -> Tensor: ...


@runtime_checkable
class PreferenceModel(Protocol):
    def prefer(self, prompts: Sequence[Text], a: Sequence[Text], b: Sequence[Text]) -> Tensor: ...

    def win_rate_matrix(self, prompt: Text, responses: Sequence[Text]) -> Tensor: ...


class RewardModel:
    """A trained reward model as a judge: `outputs` gives the raw head outputs [N, D]; `score` the reward [N]
    (D = 1, or the projection v^T r(x, y) on `direction` for attribute heads)."""

    def __init__(self, model: nn.Module, tokenizer, batch_size: int = 8, max_length: int | None = 1024,
                 direction: Sequence[float] | None = None):
        from preflab.reward_models.eval import capped_max_length
        from preflab.reward_models.heads import reward_config

        self.model, self.tokenizer = model.eval(), tokenizer
        self.batch_size, self.max_length = batch_size, capped_max_length(model, max_length)
        self.info = reward_config(model)
        self.direction = None if direction is None else torch.as_tensor(direction, dtype=torch.float32)
        width = _head_width(model)
        if self.direction is not None and (self.direction.dim() != 1 or len(self.direction) != width):
            names = self.info.get("attributes") or f"{width} outputs"
            raise ConfigError(f"direction={list(map(float, self.direction.reshape(-1)))} must have one weight per "
                              f"output of the model ({names}); give {width} numbers.")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    @classmethod
    def from_pretrained(cls, path: str, **kwargs) -> "RewardModel":
        from preflab.reward_models.heads import load_reward_model, reward_tokenizer

        return cls(load_reward_model(path), reward_tokenizer(path), **kwargs)

    def outputs(self, prompts: Sequence[Text], responses: Sequence[Text],
                contexts: Sequence[str | None] | None = None) -> Tensor:
        """[N, D] head outputs for (prompt, response) pairs; no gradient."""
        from preflab.data.layout import padded
        from preflab.data.tokenize import tokenize_unpaired
        from preflab.reward_models.context import CONTEXT_TEMPLATE, render_context
        from preflab.reward_models.heads import sequence_outputs

        if len(prompts) != len(responses) or (contexts is not None and len(contexts) != len(prompts)):
            raise ConfigError("prompts, responses (and contexts) must have the same length.")
        if contexts is not None:
            template = self.info.get("context_template", CONTEXT_TEMPLATE)
            prompts = [render_context(p, c, template) for p, c in zip(prompts, contexts)]
        examples = [UnpairedExample(i, p, r, True) for i, (p, r) in enumerate(zip(prompts, responses))]
        items, _ = tokenize_unpaired(examples, self.tokenizer, max_length=self.max_length, joint_only=True)
        device = next(self.model.parameters()).device
        chunks = []
        with torch.no_grad():
            for i in range(0, len(items), self.batch_size):
                batch = padded([(it.prompt_ids, it.completion_ids) for it in items[i:i + self.batch_size]],
                               self.pad_id).to(device)
                chunks.append(sequence_outputs(self.model, batch.input_ids, batch.attention_mask).cpu())
        return torch.cat(chunks) if chunks else torch.zeros(0, 1)

    def score(self, prompts: Sequence[Text], responses: Sequence[Text],
              contexts: Sequence[str | None] | None = None) -> Tensor:
        out = self.outputs(prompts, responses, contexts)
        if self.direction is not None:
            return out @ self.direction.to(out.dtype)
        if out.shape[1] != 1:
            raise ConfigError(f"this model has {out.shape[1]} outputs; give direction= (a unit vector over its "
                              "attributes) to score along it, or use .outputs().")
        return out[:, 0]


class BTPreference:
    """P(a > b | x) = sigma((r(x, a) - r(x, b)) / tau) from any RewardFunction."""

    def __init__(self, reward: RewardFunction, tau: float = 1.0):
        self.reward, self.tau = reward, tau

    def prefer(self, prompts, a, b) -> Tensor:
        return torch.sigmoid((self.reward.score(prompts, a) - self.reward.score(prompts, b)) / self.tau)

    def win_rate_matrix(self, prompt: Text, responses: Sequence[Text]) -> Tensor:
        return torch.sigmoid(self.log_odds_matrix(prompt, responses))

    def log_odds_matrix(self, prompt: Text, responses: Sequence[Text]) -> Tensor:
        """[K, K] log(P / (1 - P)) = (r_i - r_j) / tau, exact (no sigmoid round trip; GPO's score table)."""
        r = self.reward.score([prompt] * len(responses), list(responses))
        return (r[:, None] - r[None, :]) / self.tau


class GPMPreference:
    """P(a > b | x) = sigma(s(a > b) / tau) from a model with a GPM head (`preflab.reward_models.gpm`)."""

    def __init__(self, model: nn.Module, tokenizer, head=None, **kwargs):
        from preflab.reward_models.heads import head_from_config, reward_config

        self.encoder = RewardModel(model, tokenizer, **kwargs)
        self.head = head or head_from_config(reward_config(model))

    def embed(self, prompts, responses) -> Tensor:
        return self.head.embed(self.encoder.outputs(prompts, responses))

    def prefer(self, prompts, a, b) -> Tensor:
        from preflab.reward_models.gpm import skew_score

        return torch.sigmoid(skew_score(self.embed(prompts, a), self.embed(prompts, b)) / self.head.tau)

    def win_rate_matrix(self, prompt: Text, responses: Sequence[Text]) -> Tensor:
        return torch.sigmoid(self.log_odds_matrix(prompt, responses))

    def log_odds_matrix(self, prompt: Text, responses: Sequence[Text]) -> Tensor:
        """[K, K] log(P / (1 - P)) = s(y_i > y_j) / tau, exact: the raw score table GPO trains on (a float32
        sigmoid saturates to 1 near s/tau = 17, where the log-odds would be lost)."""
        from preflab.reward_models.gpm import score_matrix

        return score_matrix(self.embed([prompt] * len(responses), list(responses))) / self.head.tau


class SymmetrizedPreference:
    """Wraps an order-sensitive judge g(prompts, a, b) -> [N] probabilities: P = (g(a, b) + 1 - g(b, a)) / 2."""

    def __init__(self, judge: Callable[[Sequence[Text], Sequence[Text], Sequence[Text]], Tensor]):
        self.judge = judge

    def prefer(self, prompts, a, b) -> Tensor:
        return 0.5 * (torch.as_tensor(self.judge(prompts, a, b)) + 1 - torch.as_tensor(self.judge(prompts, b, a)))

    def win_rate_matrix(self, prompt: Text, responses: Sequence[Text]) -> Tensor:
        k = len(responses)
        i, j = torch.triu_indices(k, k, 1)
        p = self.prefer([prompt] * len(i), [responses[x] for x in i], [responses[y] for y in j]).float()
        out = torch.full((k, k), 0.5)
        out[i, j], out[j, i] = p, 1 - p
        return out


class MatrixPreference:
    """A tabular oracle: P[i, j] over named responses (the lab's games as a PreferenceModel); prompts ignored."""

    def __init__(self, matrix, names: Sequence[str]):
        self.matrix = torch.as_tensor(matrix, dtype=torch.float64)
        if not torch.allclose(self.matrix + self.matrix.T, torch.ones_like(self.matrix), atol=1e-9):
            raise ConfigError("a preference matrix needs P + P^T = 1 (so P[i, i] = 1/2).")
        self.index = {name: i for i, name in enumerate(names)}

    def prefer(self, prompts, a, b) -> Tensor:
        return self.matrix[[self.index[x] for x in a], [self.index[y] for y in b]]

    def win_rate_matrix(self, prompt, responses) -> Tensor:
        idx = [self.index[x] for x in responses]
        return self.matrix[idx][:, idx]


def _head_width(model: nn.Module) -> int:
    """The number of head outputs: the `score` layer's (preflab's models and most transformers classifiers), else the
    config's num_labels."""
    score = getattr(model, "score", None)
    return score.out_features if isinstance(score, nn.Linear) else int(getattr(model.config, "num_labels", 1))


def load_judge(path: str, **kwargs) -> RewardModel | GPMPreference:
    """The judge saved in `path`: a GPMPreference for a GPM head, else a RewardModel (use BTPreference(judge) for
    probabilities)."""
    from preflab.reward_models.heads import load_reward_model, reward_config, reward_tokenizer

    model = load_reward_model(path)
    tokenizer = reward_tokenizer(path)
    info = reward_config(model)
    if info.get("head") == "gpm":
        return GPMPreference(model, tokenizer, **kwargs)
    width = _head_width(model)
    if kwargs.get("direction") is None and (info.get("head") == "multi_objective" or width != 1):
        names = info.get("attributes") or f"{width} outputs"
        raise ConfigError(f"{path} is a multi-output reward model ({names}), not a one-score judge; score it along "
                          "a direction: load_judge(path, direction=[...]) (a unit vector over its outputs), e.g. as a "
                          "judge object passed to the online API; reward_weights weigh several judges, not one "
                          "model's outputs.")
    return RewardModel(model, tokenizer, **kwargs)


def reward_function(path: str, allow_pickle: bool = False, batch_size: int = 16, max_length: int = 1024):
    """f(prompts, completions, **columns) -> list of rewards (TRL's reward-function form) of the reward model saved
    in `path` (a run directory, a checkpoint-<step> or a sequence-classification checkpoint with a trained head),
    scored as it was trained: `RewardModel` over `load_reward_model` (a folder without a trained head is refused)."""
    from preflab.reward_models.heads import load_reward_model, reward_tokenizer

    judge = RewardModel(load_reward_model(path, allow_pickle), reward_tokenizer(path), batch_size=batch_size,
                        max_length=max_length)

    def score(prompts, completions, **_) -> list[float]:
        return judge.score(list(prompts), list(completions)).float().tolist()

    return score
