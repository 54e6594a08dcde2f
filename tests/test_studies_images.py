"""The Frechet distance against closed forms, and the feature classifier on a separable toy task."""
import pytest
import torch

from scoresde.studies.images import FeatureCNN, frechet_distance, train_feature_classifier


def _features(n=300, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g, dtype=torch.float64)
    return torch.randn(n, d, generator=g, dtype=torch.float64) @ mix + torch.randn(d, generator=g, dtype=torch.float64)


def test_identical_sets_are_at_distance_zero():
    a = _features()
    assert abs(frechet_distance(a, a)) < 1e-9 * float(torch.cov(a.T).trace())


def test_a_shift_costs_its_squared_length():
    a = _features()
    c = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0], dtype=torch.float64)
    assert frechet_distance(a, a + c) == pytest.approx(float(c.pow(2).sum()), rel=1e-9)


def test_a_scaling_matches_the_closed_form():
    # b = s a: Sigma_b = s^2 Sigma_a, (Sigma_a^1/2 Sigma_b Sigma_a^1/2)^1/2 = s Sigma_a, so
    # d^2 = (1 - s)^2 (|mu_a|^2 + tr Sigma_a)
    a, s = _features(), 0.3
    expected = (1 - s) ** 2 * float(a.mean(0).pow(2).sum() + torch.cov(a.T).trace())
    assert frechet_distance(a, s * a) == pytest.approx(expected, rel=1e-9)


def test_agrees_with_scipy_sqrtm_and_is_symmetric():
    from scipy.linalg import sqrtm

    a, b = _features(seed=1), _features(n=200, seed=2)
    ca, cb = torch.cov(a.T).numpy(), torch.cov(b.T).numpy()
    ref = float(((a.mean(0) - b.mean(0)) ** 2).sum()) + float(
        (ca + cb - 2 * sqrtm(ca @ cb).real).trace())
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-8)
    assert frechet_distance(b, a) == pytest.approx(ref, rel=1e-8)


def test_bad_features_are_named():
    a = _features()
    with pytest.raises(ValueError, match="features_a"):
        frechet_distance(a[0], a)
    with pytest.raises(ValueError, match="features_b: expected 5"):
        frechet_distance(a, a[:, :3])
    with pytest.raises(ValueError, match="features_b: expected finite"):
        frechet_distance(a, a * float("nan"))
    with pytest.raises(ValueError, match="image_size"):
        FeatureCNN(1, 7, 10)


def test_classifier_separates_a_toy_task_and_exposes_features():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(2, (256,), generator=g)
    x = 0.3 * torch.randn(256, 1, 8, 8, generator=g)
    x[y == 0, :, :4] += 1.0  # class 0 bright on top, class 1 at the bottom
    x[y == 1, :, 4:] += 1.0
    net = train_feature_classifier(x[:192], y[:192], epochs=3, feature_dim=16, generator=g)
    with torch.no_grad():
        acc = float((net(x[192:]).argmax(1) == y[192:]).double().mean())
        assert net.features(x[:3]).shape == (3, 16)
    assert acc > 0.95
    with pytest.raises(ValueError, match="y: expected 192"):
        train_feature_classifier(x[:192], y[:10])
