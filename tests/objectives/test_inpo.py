"""inpo against models-and-loops.md #42: fixture values, reduction to IPO, and the loss minimizer = the OMD update."""
import pytest
import torch

from preflab.errors import ConfigError
from preflab.objectives import PairBatch, get_objective
from preflab.objectives.base import SequenceLogps

F64 = dict(dtype=torch.float64)


def fixture(ref=(-11.0, -11.5), prev=(-10.5, -11.8)):
    return PairBatch.from_sums(torch.tensor([-10.0], **F64), torch.tensor([-12.0], **F64), torch.tensor([ref[0]], **F64),
                               torch.tensor([ref[1]], **F64),
                               extras={"prev_chosen_logps": [prev[0]], "prev_rejected_logps": [prev[1]]})


def test_fixture_values():
    # h_t = 2 - (1/3)*0.5 - (2/3)*1.3 = 0.966667
    out = get_objective("inpo", eta=1.0, tau=1 / 3)(fixture())
    assert out.metrics["inpo/h_t"].item() == pytest.approx(0.966667, abs=1e-6)
    assert out.loss.item() == pytest.approx(0.217778, abs=1e-6)
    default = get_objective("inpo")(fixture()).loss.item()  # the released run's eta' = 0.005, ratio 1/3: target 100
    assert default == pytest.approx((2.9 / 3 - 1 / (2 * 0.005)) ** 2, abs=1e-8)
    assert default == pytest.approx(9807.60111111, abs=1e-6)  # (2.9/3 - 100)^2 by hand


def test_eta_tau_one_is_sum_form_ipo():
    # the pi_t anchor vanishes: any previous-iterate values give IPO with beta = 1/eta
    for prev in [(-10.5, -11.8), (3.0, -40.0)]:
        out = get_objective("inpo", eta=10.0, tau=0.1)(fixture(prev=prev))
        assert out.loss.item() == pytest.approx(12.25, abs=1e-12)
        ipo = get_objective("ipo", beta=0.1, token_agg="sum")(fixture(prev=prev))
        assert out.loss.item() == pytest.approx(ipo.loss.item(), abs=1e-12)


def test_tau_zero_ignores_the_reference():
    a = get_objective("inpo", eta=1.0, tau=0.0)(fixture()).loss
    b = get_objective("inpo", eta=1.0, tau=0.0)(fixture(ref=(5.0, -30.0))).loss
    assert a.item() == b.item()


def test_rejects_mixture_weight_above_one():
    with pytest.raises(ConfigError, match="eta"):
        get_objective("inpo", eta=2.0, tau=1.0)


def test_population_minimizer_is_the_closed_form_update():
    # G3, pi_t = (0.6, 0.3, 0.1), pi_ref uniform, eta = 0.5, tau = 0.1; pairs y, y' ~ pi_t ordered by a draw from P
    M = torch.tensor([[0.0, 1, -2], [-1, 0, 3], [2, -3, 0]], **F64)
    P, pt, ref = 0.5 + M / 6, torch.tensor([0.6, 0.3, 0.1], **F64), torch.full((3,), 1 / 3, **F64)
    eta, tau = 0.5, 0.1
    W, L = (x.flatten() for x in torch.meshgrid(torch.arange(3), torch.arange(3), indexing="ij"))
    weight = pt[W] * pt[L] * P[W, L]                 # probability of drawing (y_w, y_l) = (W, L)
    theta = pt.log().clone().requires_grad_(True)
    opt = torch.optim.LBFGS([theta], max_iter=500, tolerance_grad=1e-14, tolerance_change=1e-16,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        lp = torch.log_softmax(theta, -1)
        b = PairBatch.from_sums(lp[W], lp[L], ref.log()[W], ref.log()[L],
                                extras={"prev_chosen_logps": pt.log()[W], "prev_rejected_logps": pt.log()[L]})
        loss = (get_objective("inpo", eta=eta, tau=tau)(b).losses * weight).sum()
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)
    pi = torch.softmax(theta.detach(), -1)
    omd = pt ** (1 - eta * tau) * ref ** (eta * tau) * torch.exp(eta * (P @ pt))
    torch.testing.assert_close(pi, omd / omd.sum(), atol=1e-8, rtol=0)
    torch.testing.assert_close(pi, torch.tensor([0.59311514, 0.29695048, 0.10993439], **F64), atol=1e-7, rtol=0)


def test_mnpo_config_equals_the_mnpo_trainer_with_one_past_iterate():
    """smiles724/MNPO@b8317e9 `mnpo_scripts/mnpo_trainer.py::mnpo_loss` (whose paper recovers INPO as the game with
    opponents {pi_t, pi_ref}), one history entry: logits = d_pi - ratio d_ref - (1 - ratio) d_t, loss
    (logits - 1/(2 eta'))^2, with its config values eta' = 0.0075, ratio = 1/3 (training_configs/*-iter1.yaml).
    Written out here by hand; preflab's inpo at eta = 1/eta', tau = 2.5e-3 (so eta tau = 1/3) gives the same (the
    defaults were these until the 2026-12 paper audit; they are now the released INPO run's, next test)."""
    batch = PairBatch.from_sums(torch.tensor([-10.0, -31.5], **F64), torch.tensor([-12.0, -30.0], **F64),
                                torch.tensor([-11.0, -29.0], **F64), torch.tensor([-11.5, -33.0], **F64),
                                extras={"prev_chosen_logps": [-10.5, -30.0], "prev_rejected_logps": [-11.8, -31.0]})
    d_pi, d_ref, d_t = torch.tensor([2.0, -1.5], **F64), torch.tensor([0.5, 4.0], **F64), torch.tensor([1.3, 1.0], **F64)
    eta_prime, ratio = 0.0075, 1 / 3
    mnpo = (d_pi - ratio * d_ref - (1 - ratio) * d_t - 1 / (2 * eta_prime)) ** 2
    out = get_objective("inpo", eta=1 / 7.5e-3, tau=2.5e-3)(batch)
    torch.testing.assert_close(out.losses, mnpo, rtol=1e-12, atol=1e-9)
    assert out.loss.item() == pytest.approx(mnpo.mean().item(), rel=1e-12)


def _released_inpo_losses(pol_w, pol_l, ref_w, ref_l, last_w, last_l, ratio, denom):
    """A transcription of the INPO training code committed as `inpo_original` in
    XuHuang441/Multi-player-Nash-Policy-Optimization@83d08c9 ("add inpo orignal"): `inpo/trainer.py::
    MyPreferenceTrainer.inpo_loss` (`logits = pi_logratios - ratio * ref_logratios - (1 - ratio) * last_logratios`,
    `losses = (logits - 1 / (2 * denom)) ** 2`, `losses.mean()` in `get_batch_metrics`), fed by TRL's
    `get_batch_logps` with average_log_prob False (loss_type "inpo" is not "ipo"): response-token sums."""
    pi_logratios = pol_w - pol_l
    ref_logratios = ref_w - ref_l
    last_logratios = last_w - last_l
    logits = pi_logratios - ratio * ref_logratios - (1 - ratio) * last_logratios
    return (logits - 1 / (2 * denom)) ** 2


def _token_side(gen, lengths, T=7, prompt=2, scale=3.0):
    """[B, T] token log-probs with a 2-token prompt and responses of the given lengths (the rest padding)."""
    lp = -scale * torch.rand(len(lengths), T, generator=gen, dtype=torch.float64)
    mask = torch.zeros(len(lengths), T, dtype=torch.bool)
    for i, n in enumerate(lengths):
        mask[i, prompt:prompt + n] = True
    return SequenceLogps(lp, mask)


@pytest.mark.parametrize("eta_prime, ratio", [(0.005, 1 / 3), (0.0075, 1 / 3), (0.0075, 0.0)],
                         ids=["released-run", "mnpo-config", "released-script-defaults"])
def test_loss_and_gradient_are_the_released_inpo_trainer(eta_prime, ratio):
    """The released run (`run_inpo.sh`: eta 0.005, ratio 1/3, reference = the SFT model, `last` = the previous
    iterate, both precomputed by `inpo/precompute.py`) and the script defaults (`inpo_train.py`: eta 0.0075,
    ratio 0) map to preflab's inpo with eta = 1/eta', tau = ratio * eta'; the loss and its gradient wrt the
    policy's token log-probs equal the transcription on random token log-probs of unequal lengths (so a per-token
    mean would differ)."""
    gen = torch.Generator().manual_seed(10)
    lens_w, lens_l = [3, 5, 1, 4], [5, 2, 4, 4]
    sides = {name: _token_side(gen, lens) for name, lens in
             [("pw", lens_w), ("pl", lens_l), ("rw", lens_w), ("rl", lens_l), ("tw", lens_w), ("tl", lens_l)]}
    pw = SequenceLogps(sides["pw"].token_logps.clone().requires_grad_(True), sides["pw"].mask)
    pl = SequenceLogps(sides["pl"].token_logps.clone().requires_grad_(True), sides["pl"].mask)
    batch = PairBatch(pw, pl, sides["rw"], sides["rl"],
                      {"prev_chosen_logps": sides["tw"], "prev_rejected_logps": sides["tl"]})
    out = get_objective("inpo", eta=1 / eta_prime, tau=ratio * eta_prime)(batch)

    def tsum(s, lp=None):  # TRL get_batch_logps(average_log_prob=False): (per_token_logps * loss_mask).sum(-1)
        return ((s.token_logps if lp is None else lp) * s.mask).sum(-1)

    lp_w = sides["pw"].token_logps.clone().requires_grad_(True)
    lp_l = sides["pl"].token_logps.clone().requires_grad_(True)
    released = _released_inpo_losses(tsum(sides["pw"], lp_w), tsum(sides["pl"], lp_l), tsum(sides["rw"]),
                                     tsum(sides["rl"]), tsum(sides["tw"]), tsum(sides["tl"]), ratio, eta_prime)
    torch.testing.assert_close(out.losses, released, rtol=1e-12, atol=1e-9)
    assert out.loss.item() == pytest.approx(released.mean().item(), rel=1e-12)
    out.loss.backward()
    released.mean().backward()
    torch.testing.assert_close(pw.token_logps.grad, lp_w.grad, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(pl.token_logps.grad, lp_l.grad, rtol=1e-12, atol=1e-9)
    assert pw.token_logps.grad[~pw.mask].abs().max().item() == 0.0  # prompt and padding carry no gradient


def test_defaults_are_the_released_inpo_run():
    """The defaults (no parameters given) are `inpo_original/run_inpo.sh`'s eta' = 0.005, ratio = 1/3 (also
    `run_inpo_fixed.sh` at the repository's HEAD): the loss equals the released `inpo_loss` transcription there,
    and differs from it at MNPO's eta' = 0.0075 (the defaults before the 2026-12 paper audit)."""
    batch = PairBatch.from_sums(torch.tensor([-10.0, -31.5], **F64), torch.tensor([-12.0, -30.0], **F64),
                                torch.tensor([-11.0, -29.0], **F64), torch.tensor([-11.5, -33.0], **F64),
                                extras={"prev_chosen_logps": [-10.5, -30.0], "prev_rejected_logps": [-11.8, -31.0]})
    t = lambda *v: torch.tensor(v, **F64)  # noqa: E731
    args = (t(-10.0, -31.5), t(-12.0, -30.0), t(-11.0, -29.0), t(-11.5, -33.0), t(-10.5, -30.0), t(-11.8, -31.0))
    out = get_objective("inpo")(batch)
    torch.testing.assert_close(out.losses, _released_inpo_losses(*args, ratio=1 / 3, denom=0.005), rtol=1e-12,
                               atol=1e-9)
    assert out.loss.item() != pytest.approx(_released_inpo_losses(*args, ratio=1 / 3, denom=0.0075).mean().item(),
                                            rel=1e-3)
