"""The token environment: a tiny vocabulary, fixed length L, an autoregressive tabular policy.

Every response is a sequence y = (y_1..y_L) over V tokens, so all N = V^L sequences are enumerable and
    log pi(y) = sum_t log pi(y_t | s_t),   pi(. | s) = softmax(theta[s]),
where the state s_t is either the whole prefix y_<t (`context="prefix"`, a fully tabular policy with
sum_{t<L} V^t states) or only the previous token (`context="last"`, V + 1 states shared across positions: the
smallest policy whose parameters are shared between different responses, as an LLM's are).

The environment speaks the objective contract at the token level: `batch(...)` returns a PairBatch whose sides are
SequenceLogps [B, L] of per-token log-probs, with the exact per-token KL(pi_ref(.|s_t) || pi_theta(.|s_t)) in
extras["chosen_token_kl"], extras["rejected_token_kl"] (what token-level objectives such as SparsePO and RRPO
read), and the one-hot state s_t as the hidden state in extras["chosen_hidden"], extras["rejected_hidden"].
With X = 1 prompt, `logp(theta)` is [1, N] and the population trainer treats sequences as responses.

Token-level optimum (Rafailov et al. 2024, "From r to Q*: Your Language Model is Secretly a Q-Function",
arXiv:2404.12358): for step rewards r(s, a) with sequence reward R(y) = sum_t r(s_t, y_t), soft value iteration
    Q(s, a) = r(s, a) + V(s'),   V(s) = beta log sum_a pi_ref(a|s) exp(Q(s, a)/beta),   V(terminal) = 0,
    pi*(a|s) = pi_ref(a|s) exp((Q(s, a) - V(s))/beta)
gives exactly the sequence-level optimum pi_ref(y) exp(R(y)/beta)/Z, and the implicit token reward
beta log pi*(a|s)/pi_ref(a|s) = r(s, a) + V(s') - V(s) is the step reward up to potential-based shaping
(the view used by token-level objectives and by TPO's step rewards). Requires context="prefix".
"""
from __future__ import annotations

import itertools

import numpy as np
import torch

from preflab.lab.bandit import DTYPE
from preflab.objectives import PairBatch, SequenceLogps


class TokenEnv:
    def __init__(self, vocab: int = 3, length: int = 3, context: str = "prefix", ref_logits=None, seed: int = 0):
        if context not in ("prefix", "last"):
            raise ValueError(f"context must be 'prefix' or 'last', got {context!r}.")
        if not (isinstance(vocab, (int, np.integer)) and vocab >= 2 and isinstance(length, (int, np.integer))
                and length >= 1):
            # vocab 1 or length 0 has one sequence, so no (chosen, rejected) pair: sample_pairs then failed inside
            # numpy ("Cannot take a larger sample than population"), vocab 0 or a float further down
            raise ValueError(f"TokenEnv needs vocab >= 2 tokens and length >= 1 (integers), so that two sequences "
                             f"differ; got vocab={vocab!r}, length={length!r}.")
        self.V, self.L, self.context = vocab, length, context
        self.sequences = np.array(list(itertools.product(range(vocab), repeat=length)), dtype=np.int64)  # [N, L]
        if context == "prefix":
            prefixes = [()] + [p for t in range(1, length) for p in itertools.product(range(vocab), repeat=t)]
            index = {p: k for k, p in enumerate(prefixes)}
            states = [[index[tuple(y[:t])] for t in range(length)] for y in self.sequences]
        else:
            states = [[0] + [1 + int(y[t - 1]) for t in range(1, length)] for y in self.sequences]
            prefixes = [()] + [(v,) for v in range(vocab)]
        self.n_states = len(prefixes)
        self.state_of = torch.as_tensor(np.array(states), dtype=torch.long)            # [N, L]
        self.tokens = torch.as_tensor(self.sequences, dtype=torch.long)                # [N, L]
        if ref_logits is None:
            ref_logits = np.random.default_rng(seed).normal(0.0, 1.0, (self.n_states, vocab))
        self.ref_params = torch.as_tensor(np.asarray(ref_logits, dtype=np.float64), dtype=DTYPE)

    @property
    def n_sequences(self) -> int:
        return len(self.sequences)

    # -- the policy-model protocol used by preflab.lab.population ------------------------------------------
    def init(self) -> torch.Tensor:
        return self.ref_params.clone()

    def token_logps(self, params: torch.Tensor) -> torch.Tensor:
        """[N, L] log pi(y_t | s_t) of every sequence."""
        table = torch.log_softmax(params, dim=-1)  # [S, V]
        return table[self.state_of, self.tokens]

    def logp(self, params: torch.Tensor) -> torch.Tensor:
        """[1, N] sequence log-probs (one prompt)."""
        return self.token_logps(params).sum(-1).unsqueeze(0)

    def probs(self, params: torch.Tensor) -> np.ndarray:
        return torch.exp(self.logp(params.detach())).numpy()

    def token_kl(self, params: torch.Tensor) -> torch.Tensor:
        """[N, L] KL(pi_ref(.|s_t) || pi_theta(.|s_t)) at every position of every sequence."""
        ref = torch.log_softmax(self.ref_params, -1)
        kl_state = (ref.exp() * (ref - torch.log_softmax(params, -1))).sum(-1)  # [S]
        return kl_state[self.state_of]

    def batch(self, params, x, i, j, extras=None) -> PairBatch:
        """Pairs (sequence i chosen, sequence j rejected) as token-level SequenceLogps with the token-KL extras."""
        pol, ref = self.token_logps(params), self.token_logps(self.ref_params)
        kl = self.token_kl(params)
        mask = torch.ones(len(i), self.L, dtype=torch.bool)
        extras = dict(extras or {})
        extras.setdefault("chosen_token_kl", kl[i])
        extras.setdefault("rejected_token_kl", kl[j])
        onehot = torch.eye(self.n_states, dtype=DTYPE)[self.state_of]  # [N, L, S]: the tabular "hidden state"
        extras.setdefault("chosen_hidden", onehot[i])
        extras.setdefault("rejected_hidden", onehot[j])
        return PairBatch(SequenceLogps(pol[i], mask), SequenceLogps(pol[j], mask),
                         SequenceLogps(ref[i], mask), SequenceLogps(ref[j], mask), extras)

    # -- closed forms -----------------------------------------------------------------------------------
    def sequence_reward(self, step_reward) -> np.ndarray:
        """[N] R(y) = sum_t r(s_t, y_t) for a [S, V] table of step rewards."""
        r = np.asarray(step_reward, dtype=np.float64)
        return r[self.state_of.numpy(), self.sequences].sum(-1)

    def soft_optimum(self, step_reward, beta: float):
        """(theta* [S, V] = log pi*(a|s), V [S]) by soft value iteration (context='prefix' only)."""
        if self.context != "prefix":
            raise ValueError("the token-level optimum of a sequence reward needs context='prefix'.")
        r = np.asarray(step_reward, dtype=np.float64)
        log_ref = torch.log_softmax(self.ref_params, -1).numpy()
        value = np.zeros(self.n_states)
        policy = np.zeros_like(log_ref)
        # states are ordered by depth; children of state s at depth t are the prefixes s + (a,)
        child = self._children()
        for s in reversed(range(self.n_states)):
            q = r[s] + np.array([value[c] if c >= 0 else 0.0 for c in child[s]])
            m = np.max(log_ref[s] + q / beta)
            value[s] = beta * (m + np.log(np.sum(np.exp(log_ref[s] + q / beta - m))))
            policy[s] = log_ref[s] + (q - value[s]) / beta
        return policy, value

    def _children(self) -> list[list[int]]:
        child = [[-1] * self.V for _ in range(self.n_states)]
        st, tok = self.state_of.numpy(), self.sequences
        for n in range(self.n_sequences):
            for t in range(self.L - 1):
                child[st[n, t]][tok[n, t]] = st[n, t + 1]
        return child
