"""Guidance and imputation against the exact mixture oracle: identities of scores, then sample moments."""
import math

import pytest
import torch

import scoresde as sd
from scoresde import guidance as G
from scoresde import toy
from scoresde.samplers import available, get_sampler, sample

SDES = {"vp": sd.VPSDE, "ve": sd.VESDE}


def points(n, dim=2, seed=0):
    return 2 * torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def times(sde, n):
    return torch.linspace(0.02, 0.98, n, dtype=torch.float64) * sde.T


def moment_bounds(x, mean, cov, prior_bias=0.0, z=4.5):
    """Sample mean and covariance against the exact ones, entry by entry, within z standard errors.

    SE of a mean entry: sqrt(S_ii / n); of a covariance entry: sqrt((S_ii S_jj + S_ij^2) / n) (Gaussian
    fourth moments). ``prior_bias`` bounds the deterministic shift from starting at N(0, sigma_T^2 I)
    instead of the exact p_T. z = 4.5 over a handful of entries: a false alarm has probability < 1e-4.
    """
    n = x.shape[0]
    d = torch.diagonal(cov)
    se_mean = (d / n).sqrt()
    se_cov = ((d[:, None] * d[None, :] + cov**2) / n).sqrt()
    err_mean = (x.mean(0) - mean).abs()
    err_cov = (torch.cov(x.T).reshape(cov.shape) - cov).abs()
    assert (err_mean <= z * se_mean + prior_bias).all(), (err_mean, z * se_mean + prior_bias)
    assert (err_cov <= z * se_cov + 2 * prior_bias * mean.abs().max()).all(), (err_cov, z * se_cov)
    return float(err_mean.max()), float(err_cov.max())


def prior_shift(sde, mix_k):
    """Bound on the mean shift at t_min caused by the prior mismatch, through the linear Gaussian PF flow."""
    a_T, s_T = (float(v) for v in sde.alpha_sigma(torch.tensor(sde.T, dtype=torch.float64)))
    a_0, s_0 = (float(v) for v in sde.alpha_sigma(torch.tensor(sde.t_min, dtype=torch.float64)))
    ev = torch.linalg.eigvalsh(mix_k.covariance())
    gain = math.sqrt((a_0**2 * float(ev.max()) + s_0**2) / (a_T**2 * float(ev.min()) + s_T**2))
    return gain * a_T * float(mix_k.mean().norm())


# ----- classifier guidance ----------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(SDES))
def test_exact_classifier_guidance_is_the_component_score(name):
    sde, mix = SDES[name](), toy.gaussian_mixture_2d()
    base = mix.model(sde)
    x, t = points(12), times(sde, 12)
    for k in range(mix.n_components):
        guided = G.classifier_guidance(base, G.mixture_classifier(mix, sde), k, scale=1.0, n_classes=3)
        torch.testing.assert_close(guided.score(x, t), mix.component_score(x, t, sde, k), rtol=1e-8, atol=1e-8)
    # scale 0: the unconditional model; scale w: s + w (s_k - s), linear in w.
    zero = G.classifier_guidance(base, G.mixture_classifier(mix, sde), 1, scale=0.0)
    torch.testing.assert_close(zero.score(x, t), mix.score(x, t, sde), rtol=0, atol=0)
    w = 3.0
    strong = G.classifier_guidance(base, G.mixture_classifier(mix, sde), 1, scale=w)
    expected = mix.score(x, t, sde) + w * (mix.component_score(x, t, sde, 1) - mix.score(x, t, sde))
    torch.testing.assert_close(strong.score(x, t), expected, rtol=1e-8, atol=1e-8)
    # The exact classifier is the posterior p_t(k | x).
    probs = torch.softmax(G.mixture_classifier(mix, sde)(x, t), 1)
    torch.testing.assert_close(probs, mix.posterior(x, t, sde), rtol=1e-10, atol=1e-12)


def test_per_sample_labels():
    sde, mix = sd.VPSDE(), toy.gaussian_mixture_2d()
    x, t = points(6), times(sde, 6)
    labels = torch.tensor([0, 1, 2, 2, 1, 0])
    guided = G.classifier_guidance(mix.model(sde), G.mixture_classifier(mix, sde), labels)
    expected = torch.stack([mix.component_score(x[i:i + 1], t[i:i + 1], sde, int(k))[0] for i, k in enumerate(labels)])
    torch.testing.assert_close(guided.score(x, t), expected, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("name", sorted(SDES))
def test_guided_samples_have_the_component_moments(name):
    sde, mix, k = SDES[name](), toy.gaussian_mixture_2d(), 0
    guided = G.classifier_guidance(mix.model(sde), G.mixture_classifier(mix, sde), k, scale=1.0)
    x_T = sde.prior_sample((3000, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    res = sample(guided, sde, "ddim", 40, x_T=x_T)
    comp = mix.component(k)
    # The same ODE solver on the component's own exact model, from the same x_T: the same samples.
    ref = sample(comp.model(sde), sde, "ddim", 40, x_T=x_T)
    torch.testing.assert_close(res.samples, ref.samples, rtol=1e-7, atol=1e-7)
    moment_bounds(res.samples, comp.mean(), comp.covariance(), prior_shift(sde, comp))


GUIDED_STEPS = 6


@pytest.mark.parametrize("method", available())
def test_every_registered_sampler_runs_a_guided_model(method):
    # A guided model is a ScoreModel: each sampler, with the same noise, gives exactly what it gives on
    # component k's own exact model (the guided score equals that score to rounding).
    sde, mix, k = sd.VPSDE(), toy.gaussian_mixture_2d(), 2
    guided = G.classifier_guidance(mix.model(sde), G.mixture_classifier(mix, sde), k)
    steps = None if get_sampler(method).adaptive else GUIDED_STEPS
    x_T = sde.prior_sample((8, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a = sample(guided, sde, method, steps, x_T=x_T.clone(), generator=torch.Generator().manual_seed(5))
    b = sample(mix.component(k).model(sde), sde, method, steps, x_T=x_T.clone(),
               generator=torch.Generator().manual_seed(5))
    assert a.samples.shape == x_T.shape and torch.isfinite(a.samples).all()
    assert a.nfe == guided.nfe
    torch.testing.assert_close(a.samples, b.samples, rtol=1e-6, atol=1e-6)


# ----- classifier-free guidance ---------------------------------------------------------------
def test_classifier_free_guidance_combines_predictions():
    sde, mix = sd.VPSDE(), toy.gaussian_mixture_2d()
    fn, null = G.mixture_conditional_fn(mix, sde)
    x, t = points(10), times(sde, 10)
    s, s1 = mix.score(x, t, sde), mix.component_score(x, t, sde, 1)
    for w in (0.0, 1.0, 2.5):
        cfg = G.classifier_free_guidance(fn, sde, 1, w, null_label=null, parameterization="score", n_classes=3)
        torch.testing.assert_close(cfg.score(x, t), s + w * (s1 - s), rtol=1e-10, atol=1e-10)
    # An eps-predicting network: the combination on eps is the same guided score.
    def fn_eps(x_, t_, y_):
        return -sde.sigma(t_)[:, None] * fn(x_, t_, y_)

    cfg_eps = G.classifier_free_guidance(fn_eps, sde, 1, 2.5, null_label=null, parameterization="eps")
    torch.testing.assert_close(cfg_eps.score(x, t), s + 2.5 * (s1 - s), rtol=1e-9, atol=1e-9)
    # One network call per guided call, even with two predictions (batched).
    assert cfg_eps.nfe == 1


def test_classifier_free_guided_samples_have_the_component_moments():
    sde, mix, k = sd.VESDE(), toy.gaussian_mixture_2d(), 1
    fn, null = G.mixture_conditional_fn(mix, sde)
    cfg = G.classifier_free_guidance(fn, sde, k, 1.0, null_label=null, parameterization="score")
    x_T = sde.prior_sample((3000, 2), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    res = sample(cfg, sde, "ddim", 40, x_T=x_T)
    comp = mix.component(k)
    moment_bounds(res.samples, comp.mean(), comp.covariance(), prior_shift(sde, comp))


# ----- imputation -----------------------------------------------------------------------------
def test_conditional_mixture_is_bayes_rule():
    # log p(x_u | x_o = y) = log p(x_o = y, x_u) - log p(x_o = y), with the observed marginal a mixture too.
    mix = toy.anisotropic_mixture(4, n_components=3)
    mask = torch.tensor([True, False, True, False])
    y = torch.tensor([0.5, 0.0, -1.0, 0.0], dtype=torch.float64)
    cond = G.conditional_mixture(mix, y, mask)
    marg = toy.GaussianMixture(mix.weights, mix.means[:, mask], mix.covs[:, mask][:, :, mask])
    xu = points(7, 2, seed=3)
    full = y.expand(7, 4).clone()
    full[:, ~mask] = xu
    expected = mix.log_prob(full) - marg.log_prob(y[mask][None]).expand(7)
    torch.testing.assert_close(cond.log_prob(xu), expected, rtol=1e-10, atol=1e-10)


def _impute(model, sde, n, seed, method="ddim", steps=40, **options):
    res = sample(model, sde, method, steps, shape=(n, 2), generator=torch.Generator().manual_seed(seed),
                 dtype=torch.float64, **options)
    return model.fill(res.samples)


@pytest.mark.parametrize("name", sorted(SDES))
def test_exact_imputation_has_the_conditional_moments(name):
    sde, mix = SDES[name](), toy.gaussian_mixture_2d()
    mask = torch.tensor([False, True])
    y = torch.tensor([0.0, 0.2], dtype=torch.float64)  # x_1 = 0.2 lies between two components: bimodal x_0
    model = G.mixture_imputation(mix, sde, y, mask)
    cond = model.conditional
    assert sorted(cond.weights.tolist())[-2] > 0.3  # a genuine two-component conditional (0.61 / 0.39)
    # DPM-Solver++ with 25 steps: its variance bias here is ~0.02 (measured on 20000 samples), a tenth of
    # the statistical bound below (4.5 SE = 0.18 for 3000 samples).
    x = _impute(model, sde, 3000, seed=0, method="dpm_solver++", steps=25)
    assert (x[:, 1] == 0.2).all()
    moment_bounds(x[:, :1], cond.mean(), cond.covariance(), prior_shift(sde, cond))


def test_replacement_and_reconstruction_are_exact_for_independent_coordinates():
    # One Gaussian with a diagonal covariance: x_u is independent of x_o, so both approximations are exact
    # (replacement's fresh y_t and the reconstruction gradient carry no information about x_u).
    sde = sd.VPSDE()
    gauss = toy.GaussianMixture([1.0], [[0.5, -1.0]], [[0.3, 0.1]])
    mask = torch.tensor([True, False])
    y = torch.tensor([2.0, 0.0], dtype=torch.float64)
    base = gauss.model(sde)
    rep = G.replacement_imputation(base, y, mask, generator=torch.Generator().manual_seed(3))
    rec = G.reconstruction_guidance(base, y, mask)
    x_rep = _impute(rep, sde, 3000, seed=1)
    x_rec = _impute(rec, sde, 3000, seed=1)
    assert (x_rep[:, 0] == 2.0).all() and (x_rec[:, 0] == 2.0).all()
    marg = toy.GaussianMixture([1.0], [[-1.0]], [[0.1]])
    for x in (x_rep, x_rec):
        moment_bounds(x[:, 1:], marg.mean(), marg.covariance(), prior_shift(sde, marg))


def _mean_ode(sde, cov, y_o, method):
    """The mean of x_t under an approximate imputation of x_u = x[1] given x_o = x[0] = y_o, for N(0, cov) data.

    Everything is linear in x for Gaussian data (s = -C_t^{-1} x, x0_hat = (I - sigma^2 C_t^{-1}) x / alpha), and
    replacement's fresh noise enters linearly with mean zero, so the mean m(t) of the PF-ODE state solves
    dm/dt = f m - g^2 E[s~(m)] / 2 exactly: an independent, closed-form prediction of the method (bias included).
    """
    import numpy as np
    from scipy.integrate import solve_ivp

    def rhs(t, m):
        tt = torch.tensor(t, dtype=torch.float64)
        a, s = (float(v) for v in sde.alpha_sigma(tt))
        f, g2 = float(sde.f(tt)), float(sde.g2(tt))
        P = np.linalg.inv(a * a * cov + s * s * np.eye(2))
        if method == "replacement":  # the model sees x_o replaced by alpha y + sigma z, E = alpha y
            s_u = -(P @ np.array([a * y_o, m[1]]))[1]
        else:  # reconstruction guidance with r^2 = sigma^2 / alpha^2
            A = (np.eye(2) - s * s * P) / a
            s_u = -(P @ m)[1] + A[0, 1] * (y_o - A[0] @ m) * a * a / (s * s)
        s_o = -(m[0] - a * y_o) / s**2
        return [f * m[0] - 0.5 * g2 * s_o, f * m[1] - 0.5 * g2 * s_u]

    sol = solve_ivp(rhs, (sde.T, sde.t_min), [0.0, 0.0], method="DOP853", rtol=1e-10, atol=1e-10)
    return float(sol.y[1, -1])


@pytest.mark.parametrize("method", ["replacement", "reconstruction"])
def test_approximate_imputation_follows_its_own_mean_dynamics(method):
    # Correlated coordinates (rho = 0.8): replacement and reconstruction guidance are biased (Chung et al.
    # 2022). Their mean under the PF ODE is nonetheless predictable in closed form; the samples must follow
    # that prediction, and the prediction must be far from the exact conditional mean rho * y = 1.2.
    sde, cov = sd.VPSDE(), torch.tensor([[1.0, 0.8], [0.8, 1.0]], dtype=torch.float64)
    mix = toy.GaussianMixture([1.0], [[0.0, 0.0]], cov[None])
    mask, y = torch.tensor([True, False]), torch.tensor([1.5, 0.0], dtype=torch.float64)
    base = mix.model(sde)
    model = (G.replacement_imputation(base, y, mask, generator=torch.Generator().manual_seed(0))
             if method == "replacement" else G.reconstruction_guidance(base, y, mask))
    predicted = _mean_ode(sde, cov.numpy(), 1.5, method)
    assert abs(predicted - float(G.conditional_mixture(mix, y, mask).mean()[0])) > 0.3  # the known bias
    x = _impute(model, sde, 2000, seed=1, steps=100)
    se = float(x[:, 1].std()) / math.sqrt(2000)
    # 4.5 SE plus DDIM's first-order error in the mean (0.004 at 100 steps, measured; it halves per doubling).
    assert abs(float(x[:, 1].mean()) - predicted) < 4.5 * se + 0.01


# ----- bad input ------------------------------------------------------------------------------
def test_bad_labels_raise():
    sde, mix = sd.VPSDE(), toy.gaussian_mixture_2d()
    clf, base = G.mixture_classifier(mix, sde), mix.model(sde)
    fn, null = G.mixture_conditional_fn(mix, sde)
    with pytest.raises(ValueError, match="y: class label 3 out of range"):
        G.classifier_guidance(base, clf, 3, n_classes=3)
    with pytest.raises(ValueError, match="y: class label -1"):
        G.classifier_free_guidance(fn, sde, torch.tensor([0, -1]), null_label=null, n_classes=3)
    with pytest.raises(ValueError, match="y: the null label"):
        G.classifier_free_guidance(fn, sde, null, null_label=null)
    with pytest.raises(ValueError, match="y"):
        G.classifier_guidance(base, clf, 1.5)
    with pytest.raises(ValueError, match="scale"):
        G.classifier_guidance(base, clf, 0, scale=float("nan"))
    guided = G.classifier_guidance(base, clf, 7)  # K is known only from the logits
    with pytest.raises(ValueError, match="y: class label 7 out of range"):
        guided.score(points(2), 0.5)
    per_sample = G.classifier_guidance(base, clf, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="y: 3 labels for a batch of 2"):
        per_sample.score(points(2), 0.5)


def test_bad_masks_raise():
    sde, mix = sd.VPSDE(), toy.gaussian_mixture_2d()
    base, y = mix.model(sde), torch.tensor([1.0, 0.0], dtype=torch.float64)
    with pytest.raises(ValueError, match="mask: shape"):
        G.replacement_imputation(base, y, torch.tensor([True, False, False]))
    with pytest.raises(ValueError, match="mask"):
        G.reconstruction_guidance(base, y, torch.tensor([0.5, 0.0]))
    with pytest.raises(ValueError, match="mask: no coordinate"):
        G.replacement_imputation(base, y, torch.tensor([False, False]))
    with pytest.raises(ValueError, match="mask: every coordinate"):
        G.mixture_imputation(mix, sde, y, torch.tensor([True, True]))
    with pytest.raises(ValueError, match="mask: expected shape"):
        G.conditional_mixture(mix, torch.zeros(3, dtype=torch.float64), torch.tensor([True, False, False]))
    with pytest.raises(ValueError, match="y: observed values must be finite"):
        G.replacement_imputation(base, torch.tensor([float("nan"), 0.0]), torch.tensor([True, False]))
    rep = G.replacement_imputation(base, y, torch.tensor([True, False]))
    with pytest.raises(ValueError, match="mask: shape"):
        rep.score(points(4, dim=3), 0.5)


# ----- end to end: a network trained with label dropout (slow: trains for a few minutes on 2 cores) ---
@pytest.mark.slow
def test_classifier_free_guidance_on_a_trained_network(tmp_path):
    from scoresde.config import TrainConfig
    from scoresde.training import Trainer, load_model

    cfg = TrainConfig(data="gaussian_mixture_2d", conditional=True, label_dropout=0.2, steps=500, batch_size=256,
                      width=64, depth=2, emb_dim=16, ckpt_every=500, warmup=50, lr=3e-3, ema_decay=0.99,
                      progress=False, tensorboard=False)
    Trainer(cfg, out=tmp_path).train()
    model, cfg = load_model(tmp_path)
    net, sde, mix = model.net, model.sde, toy.gaussian_mixture_2d()

    def labels_of(w, k):
        cfg_model = G.classifier_free_guidance(lambda x, t, y: net(x, t, y), sde, k, w, null_label=net.null_label,
                                               parameterization=cfg.parameterization, n_classes=3)
        with torch.no_grad():
            res = sample(cfg_model, sde, "dpm_solver++", 20, shape=(2000, 2), generator=torch.Generator().manual_seed(k))
        # Which component each sample belongs to, by the exact posterior at t_min.
        return mix.posterior(res.samples.double(), sde.t_min, sde).argmax(1)

    for k in range(3):
        # w = 1 samples component k (measured: >= 98% after 600 steps); unguided would give only w_k <= 50%.
        assert float((labels_of(1.0, k) == k).double().mean()) > 0.9
        # w = 0 is the unconditional model: component frequencies near the weights (0.5, 0.3, 0.2).
        freq = torch.bincount(labels_of(0.0, k), minlength=3).double() / 2000
        assert (freq - mix.weights).abs().max() < 0.1
