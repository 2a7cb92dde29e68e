"""Sampling a ppd pipeline through its user branch (methods §28 inference): the zero-initialised branch samples the
base model exactly, a perturbed one does not, gamma 0 / 1 reproduce the endpoint users, a two-user toy (A prefers
brighter latents, B darker) samples brighter for A; `preflab eval --reward-fn` on a ppd run is the win rate of the
per-user samples (PPDSampler's, the same code path) against the base model's, ties only when the branch adds 0."""
import copy
import json
import shutil

import pytest
import torch

pytest.importorskip("diffusers")

from preflab.errors import ConfigError  # noqa: E402

STEPS = 2  # DDIM steps: enough to run the sampler's loop twice


def _tiny_module(zero_init=True, tokens=3, dim=8, users=4):
    """The tiny pipeline's components and a DenoiserModule with a user branch on its UNet and a random user table."""
    from preflab.diffusion.pipeline import components_of, tiny_text_to_image_pipeline
    from preflab.diffusion.user_branch import install_user_branch
    from preflab.loops.diffusion import DenoiserModule

    comps = components_of(tiny_text_to_image_pipeline(0))
    base = copy.deepcopy(comps.denoiser).eval()
    branch = install_user_branch(comps.denoiser, dim, zero_init=zero_init)
    table = torch.nn.Embedding.from_pretrained(torch.randn(users, tokens * dim, generator=torch.Generator()
                                                           .manual_seed(4)))
    return comps, base, DenoiserModule(comps.denoiser, branch, table, tokens)


PROMPTS, SEEDS = ["a red circle", "a blue square", ""], [11, 12, 13]


def test_zero_initialised_branch_samples_the_base_model_exactly_and_a_perturbed_one_does_not():
    from preflab.diffusion.pipeline import sample_latents

    comps, base, module = _tiny_module()
    e = module.user_embeddings([0, 1, 3])
    for guidance in (1.0, 3.0):  # both sides of classifier-free guidance carry the user
        plain = sample_latents(comps, base, PROMPTS, SEEDS, STEPS, guidance)  # the UNet before the branch went in
        off = module.sample_user_latents(comps, PROMPTS, SEEDS, None, STEPS, guidance)
        on = module.sample_user_latents(comps, PROMPTS, SEEDS, e, STEPS, guidance)
        assert torch.equal(off, plain) and torch.equal(on, plain)
    with torch.no_grad():
        for block in module.user_branch.blocks.values():  # W_V^u != 0: the user stream adds something
            block.to_v_user.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    on = module.sample_user_latents(comps, PROMPTS, SEEDS, e, STEPS, 3.0)
    off = module.sample_user_latents(comps, PROMPTS, SEEDS, None, STEPS, 3.0)
    assert torch.equal(off, sample_latents(comps, base, PROMPTS, SEEDS, STEPS, 3.0))  # branch off: still the base
    assert (on - off).abs().amax(dim=(1, 2, 3)).min().item() > 1e-3  # every prompt's sample moved
    # guidance 0 is the unconditional prediction alone (uncond + 0 (cond - uncond)): it still carries the user, so
    # the branch conditions both sides of classifier-free guidance, which then guides by the text alone
    on0 = module.sample_user_latents(comps, PROMPTS, SEEDS, e, STEPS, 0.0)
    off0 = module.sample_user_latents(comps, PROMPTS, SEEDS, None, STEPS, 0.0)
    assert (on0 - off0).abs().amax(dim=(1, 2, 3)).min().item() > 1e-3
    other = module.sample_user_latents(comps, PROMPTS, SEEDS, module.user_embeddings([2, 2, 2]), STEPS, 3.0)
    assert (on - other).abs().amax(dim=(1, 2, 3)).min().item() > 1e-4  # and depends on the user
    with pytest.raises(ConfigError, match="2 user embeddings for 3 prompts"):
        module.sample_user_latents(comps, PROMPTS, SEEDS, e[:2], STEPS, 1.0)


def test_two_users_with_opposite_tastes_sample_brighter_and_darker_latents():
    """Methods §28's check: user A prefers brighter latents (+0.5), user B darker (-0.5); after training only the user
    branch (Diffusion-DPO conditioned on the user, the base UNet as reference), samples conditioned on A have a
    higher mean latent than those conditioned on B, same prompts and seeds, and the base model's lie between."""
    from preflab.diffusion.noising import PairNoiser
    from preflab.diffusion.pipeline import encode_prompts
    from preflab.diffusion.schedule import NoiseSchedule
    from preflab.diffusion.user_branch import PPDDenoiser, trainable_parameters
    from preflab.objectives import get_objective
    from preflab.scoring.diffusion import DiffusionPairs, DiffusionPairScorer
    from preflab.step import optimizer_step

    comps, _, module = _tiny_module(users=2)
    unet, branch = module.unet, module.user_branch
    e_users = module.user_embeddings([0, 1])
    text = encode_prompts(comps, ["a shape"])
    scorer = DiffusionPairScorer(PairNoiser(NoiseSchedule.from_scheduler(comps.scheduler)))
    policy, reference = PPDDenoiser(unet, branch), PPDDenoiser(unet, branch, use_user=False)
    objective = get_objective("ppd", beta=400.0)
    g = torch.Generator().manual_seed(1)

    def user_pairs(n):
        base = 0.5 * torch.randn(n, 4, 8, 8, generator=g)
        who = (torch.arange(n) % 2).reshape(-1, 1, 1, 1)  # 0 = user A, 1 = user B
        bright, dark = base + 0.5, base - 0.5
        cond = {"encoder_hidden_states": text.expand(n, -1, -1), "user_embeds": e_users[who.flatten()]}
        return DiffusionPairs(torch.where(who == 0, bright, dark), torch.where(who == 0, dark, bright), cond)

    optimizer = torch.optim.AdamW(trainable_parameters(branch), lr=3e-3, weight_decay=0.0)
    for _ in range(12):
        optimizer_step([user_pairs(8)], lambda m: objective(scorer(policy, m, reference, g)),
                       trainable_parameters(branch), optimizer, max_grad_norm=1.0)
    prompts, seeds = ["a shape"] * 8, list(range(8))
    mean = {who: module.sample_user_latents(comps, prompts, seeds, e, 10, 1.0).mean(dim=(1, 2, 3))
            for who, e in (("A", e_users[:1].expand(8, -1, -1)), ("B", e_users[1:].expand(8, -1, -1)),
                           ("base", None))}
    assert (mean["A"] > mean["B"]).all()  # per seed, not only on average
    assert (mean["A"] > mean["base"]).all() and (mean["base"] > mean["B"]).all()


@pytest.fixture(scope="module")
def ppd_run(tmp_path_factory):
    """A finished ppd run (1 step, lr 1e-2 so the branch moves) on precomputed users user0 / user1 (training) and
    user2 (held out, from the same user_embeddings file); held-out pairs of user2, user0, user2."""
    from safetensors.torch import save_file

    from preflab.config import config_from_dict
    from preflab.diffusion.pipeline import tiny_text_to_image_pipeline
    from preflab.diffusion.shapes import write_pair_dataset
    from preflab.loops.diffusion import DiffusionRun

    root = tmp_path_factory.mktemp("ppd-sample")
    tiny_text_to_image_pipeline(0).save_pretrained(root / "tiny")
    train = write_pair_dataset(root / "data", 4, seed=0)
    rows = [json.loads(x) for x in open(write_pair_dataset(root / "data", 3, seed=1, name="test"))]
    for row, user in zip(rows, ["user2", "user0", "user2"]):
        row["user_id"] = user
    held_out = root / "data" / "heldout.jsonl"
    held_out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    g = torch.Generator().manual_seed(0)
    save_file({u: torch.randn(3, 8, generator=g) * 5 for u in ("user0", "user1", "user2")},
              str(root / "users.safetensors"))
    cfg = config_from_dict({
        "task": "diffusion", "model_name_or_path": str(root / "tiny"), "dataset_name": str(train),
        "loss_type": "ppd", "beta": 200.0, "resolution": 16, "per_device_train_batch_size": 4, "max_steps": 1,
        "learning_rate": 1e-2, "lr_scheduler_type": "constant", "output_dir": str(root / "run"), "use_cpu": True,
        "disable_tqdm": True, "user_embeddings": str(root / "users.safetensors"), "seed": 3, "sample_steps": STEPS,
        "eval_fraction": 0, "report_to": "none"})
    DiffusionRun(cfg).train()
    return {"root": root, "out": root / "run", "held_out": str(held_out), "prompts": [r["prompt"] for r in rows]}


def mean_brightness(images, prompts):
    return images.float().mean(dim=(1, 2, 3)).tolist()


def test_gamma_endpoints_reproduce_the_users_samples_exactly(ppd_run):
    from preflab.loops.ppd_sample import PPDSampler

    sampler = PPDSampler(str(ppd_run["out"]))
    prompts = ppd_run["prompts"]
    a, b = sampler.sample(prompts, "user0"), sampler.sample(prompts, "user1")
    assert torch.equal(sampler.sample(prompts, "user0", other_user="user1", gamma=0.0), a)
    assert torch.equal(sampler.sample(prompts, "user0", other_user="user1", gamma=1.0), b)
    assert torch.equal(sampler.embedding("user0", "user1", 0.0), sampler.embedding("user0"))
    assert torch.equal(sampler.embedding("user0", "user1", 1.0), sampler.embedding("user1"))
    half = sampler.embedding("user0", "user1", 0.25)
    torch.testing.assert_close(half, 0.75 * sampler.embedding("user0") + 0.25 * sampler.embedding("user1"))
    # user9 is in neither the saved table nor the run's file: read from user_embeddings, standardised as in training
    from safetensors.torch import save_file

    from preflab.diffusion.user_branch import normalize_user_embeddings

    raw = torch.randn(3, 8, generator=torch.Generator().manual_seed(9)) * 5
    save_file({"user9": raw}, str(ppd_run["root"] / "more.safetensors"))
    more = PPDSampler(str(ppd_run["out"]), user_embeddings=str(ppd_run["root"] / "more.safetensors"))
    assert torch.equal(more.embedding("user9"), normalize_user_embeddings(raw))
    assert torch.equal(more.sample(prompts, "user0"), a)  # a saved user keeps its saved rows
    for kwargs, said in [({"gamma": 0.5}, "needs both other_user and gamma"),
                         ({"other_user": "user1"}, "needs both other_user and gamma"),
                         ({"other_user": "user1", "gamma": 1.5}, r"gamma 1.5 is not in \[0, 1\]"),
                         ({"other_user": "user1", "gamma": float("nan")}, "is not in")]:
        with pytest.raises(ConfigError, match=said):
            sampler.sample(prompts, "user0", **kwargs)
    with pytest.raises(ConfigError, match="user 'nobody' has no embedding in"):
        sampler.sample(prompts, "nobody")
    with pytest.raises(ConfigError, match="1 seeds for 3 prompts"):
        sampler.sample(prompts, "user0", seeds=[1])


def test_ppd_win_rate_is_the_per_user_samples_against_the_base_models(ppd_run):
    from preflab.eval.winrate import win_rate
    from preflab.loops.diffusion_eval import evaluate_diffusion_run
    from preflab.loops.ppd_sample import PPDSampler

    result = evaluate_diffusion_run(str(ppd_run["out"]), ppd_run["held_out"], reward_fn=mean_brightness,
                                    num_prompts=3, batch_size=3)
    sampler = PPDSampler(str(ppd_run["out"]))
    prompts, seeds = ppd_run["prompts"], [3 * 100003 + i for i in range(3)]
    personalized = torch.cat([sampler.sample([p], u, seeds=[s])
                              for p, u, s in zip(prompts, ["user2", "user0", "user2"], seeds)])
    base = sampler.sample(prompts, None, seeds=seeds)
    assert not torch.equal(personalized, base)  # the trained branch changes the samples
    expected = win_rate(mean_brightness(personalized, prompts), mean_brightness(base, prompts))
    assert result["win_rate"] == expected.to_dict()
    m = result["metrics"]
    assert m["win_rate"] == expected.win_rate
    assert m["reward/policy"] == pytest.approx(sum(mean_brightness(personalized, prompts)) / 3)
    assert m["reward/reference"] == pytest.approx(sum(mean_brightness(base, prompts)) / 3)


def test_ppd_win_rate_with_the_zero_branch_is_ties_only(ppd_run, tmp_path):
    """W_V^u = 0 (the branch as initialised): the user stream adds exactly 0, so every prompt ties."""
    from safetensors.torch import load_file, save_file

    from preflab.loops.diffusion_eval import evaluate_diffusion_run

    out = tmp_path / "run"
    shutil.copytree(ppd_run["out"], out)
    state = load_file(str(out / "user_branch.safetensors"))
    zeroed = [k for k in state if k.endswith("to_v_user.weight")]
    assert zeroed and any(state[k].abs().max() > 0 for k in zeroed)  # trained: non-zero before
    save_file({k: torch.zeros_like(v) if k in zeroed else v for k, v in state.items()},
              str(out / "user_branch.safetensors"))
    result = evaluate_diffusion_run(str(out), ppd_run["held_out"], reward_fn=mean_brightness, num_prompts=3,
                                    batch_size=3)
    assert result["win_rate"]["ties"] == result["win_rate"]["n"] == 3 and result["metrics"]["win_rate"] == 0.5
    assert result["metrics"]["reward/policy"] == result["metrics"]["reward/reference"]
    assert any("all 3 compared prompts are ties" in n for n in result["notes"])


def test_ppd_sampler_refuses_another_run(tmp_path):
    from preflab.loops.ppd_sample import PPDSampler

    (tmp_path / "config.yaml").write_text("task: diffusion\nloss_type: diffusion_dpo\n"
                                          "model_name_or_path: builtin:tiny-sd\ndataset_name: x.jsonl\n")
    with pytest.raises(ConfigError, match="is a diffusion_dpo run; PPDSampler samples ppd runs"):
        PPDSampler(str(tmp_path))
