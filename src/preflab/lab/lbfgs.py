"""A small L-BFGS (Nocedal & Wright 2006, Alg. 7.4 two-loop recursion + Armijo backtracking) on torch tensors.

The lab's population problems have tens to hundreds of float64 parameters and need the minimizer to ~1e-10;
this keeps the whole solve in torch (one thread) instead of going through a BLAS-threaded Fortran routine,
which is slow when the machine is shared.

    d_k = -H_k g_k        (H_k from the last m pairs s = x_{k+1} - x_k, y = g_{k+1} - g_k, with s.y > 0)
    x_{k+1} = x_k + t d_k, t = 1, 1/2, 1/4, ... until f(x_k + t d_k) <= f(x_k) + 1e-4 t g_k.d_k
Stops when max |g| < grad_tol, when f stops decreasing (three steps in a row below 1e-15 relative, or a failed
line search: float64 resolution), or after max_iter iterations.
"""
from __future__ import annotations

from typing import Callable

import torch


def lbfgs_minimize(fun_grad: Callable, x0: torch.Tensor, *, max_iter: int = 200, grad_tol: float = 1e-13,
                   history: int = 20, callback: Callable | None = None) -> tuple[torch.Tensor, float, int]:
    """Minimize f; fun_grad(x) -> (f: float, g: tensor like x). Returns (x, f, iterations).
    callback(iteration, x, f) is called after every accepted step."""
    x = x0.detach().clone()
    f, g = fun_grad(x)
    S: list = []
    Y: list = []
    it, stalled = 0, 0
    for it in range(1, max_iter + 1):
        if float(g.abs().max()) < grad_tol:
            return x, f, it - 1
        q = g.clone()
        coefs = []
        for s, y in reversed(list(zip(S, Y))):
            rho = 1.0 / float((y * s).sum())
            a = rho * float((s * q).sum())
            q -= a * y
            coefs.append((rho, a))
        if S:
            gamma = float((S[-1] * Y[-1]).sum() / (Y[-1] * Y[-1]).sum())
        else:
            gamma = min(1.0, 1.0 / float(g.abs().sum()))
        r = gamma * q
        for (s, y), (rho, a) in zip(zip(S, Y), reversed(coefs)):
            b = rho * float((y * r).sum())
            r += (a - b) * s
        d = -r
        slope = float((g * d).sum())
        if slope >= 0:  # not a descent direction: restart from steepest descent
            S.clear()
            Y.clear()
            d = -gamma * g if gamma > 0 else -g
            slope = float((g * d).sum())
        t = 1.0
        while True:
            f_new, g_new = fun_grad(x + t * d)
            if f_new <= f + 1e-4 * t * slope:
                break
            t *= 0.5
            if t < 1e-20:
                return x, f, it - 1
        s, y = t * d, g_new - g
        if float((s * y).sum()) > 1e-300:
            S.append(s)
            Y.append(y)
            if len(S) > history:
                S.pop(0)
                Y.pop(0)
        stalled = stalled + 1 if f - f_new <= 1e-15 * max(1.0, abs(f)) else 0
        x, f, g = x + s, f_new, g_new
        if callback is not None:
            callback(it, x, f)
        if stalled >= 3:
            break
    return x, f, it
