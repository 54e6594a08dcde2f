r"""Sample quality of image models: the Frechet distance on the features of a small classifier.

The Frechet distance between two Gaussians (Dowson & Landau 1982; FID, Heusel et al. 2017) is

.. math::  d^2 = \lVert \mu_a - \mu_b \rVert^2 + \operatorname{tr}\big(\Sigma_a + \Sigma_b
           - 2 (\Sigma_a^{1/2} \Sigma_b \Sigma_a^{1/2})^{1/2}\big),

here with the sample means and covariances of two sets of features. FID uses Inception-v3 features
of 299x299 RGB images; for 8x8 digits a small CNN trained on the training split plays that role
(:class:`FeatureCNN`, :func:`train_feature_classifier`). The trace term is computed from the
eigenvalues of the symmetric ``Sigma_a^{1/2} Sigma_b Sigma_a^{1/2}``, so no non-symmetric matrix
square root is needed. The estimate is biased upwards at finite sample sizes (by about
``tr(Sigma_a)/n_a + tr(Sigma_b)/n_b``), so two distances are comparable only at equal sample sizes:
compare a model against the data at the same ``n`` as the data against itself.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["frechet_distance", "FeatureCNN", "train_feature_classifier"]


def _check_features(name: str, f) -> Tensor:
    if not isinstance(f, Tensor) or f.ndim != 2 or f.shape[0] < 2 or f.shape[1] < 1:
        shape = tuple(f.shape) if isinstance(f, Tensor) else type(f).__name__
        raise ValueError(f"{name}: expected features of shape (n, d) with n >= 2, got {shape}")
    if not bool(torch.isfinite(f).all()):
        raise ValueError(f"{name}: expected finite features, got non-finite values")
    return f.detach().to(torch.float64).cpu()


def _sqrt_psd(m: Tensor) -> Tensor:
    """The symmetric square root of a symmetric positive semi-definite matrix (negative round-off clipped)."""
    w, v = torch.linalg.eigh((m + m.T) / 2)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance(features_a: Tensor, features_b: Tensor) -> float:
    """The squared Frechet distance between the Gaussians fitted to two feature sets ``(n_a, d)``, ``(n_b, d)``.

    Float64, unbiased sample covariances; ``tr((S_a^{1/2} S_b S_a^{1/2})^{1/2})`` from the eigenvalues of
    that symmetric matrix. Zero for two identical sets; ``|mu_a - mu_b|^2`` for two sets differing by a shift.
    """
    a, b = _check_features("features_a", features_a), _check_features("features_b", features_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"features_b: expected {a.shape[1]} features per row (as features_a), got {b.shape[1]}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    root_a = _sqrt_psd(cov_a)
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp_min(0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * cross)


class FeatureCNN(nn.Module):
    """A small CNN classifier for ``(B, C, H, W)`` images whose penultimate layer gives the features.

    conv3x3(C -> 32) - ReLU - conv3x3(32 -> 64) - ReLU - 2x2 max-pool - linear(-> ``feature_dim``) - ReLU
    (the features) - linear(-> ``num_classes``) (the logits).
    """

    def __init__(self, in_channels: int, image_size: int, num_classes: int, feature_dim: int = 64):
        super().__init__()
        for name, v in (("in_channels", in_channels), ("image_size", image_size), ("num_classes", num_classes),
                        ("feature_dim", feature_dim)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected a positive integer, got {v!r}")
        if image_size % 2:
            raise ValueError(f"image_size: expected an even size (one 2x2 pooling), got {image_size}")
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64 * (image_size // 2) ** 2, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def train_feature_classifier(x: Tensor, y: Tensor, *, epochs: int = 30, batch_size: int = 64, lr: float = 2e-3,
                             feature_dim: int = 64, generator: torch.Generator | None = None) -> FeatureCNN:
    """Train a :class:`FeatureCNN` on images ``x`` ``(N, C, H, H)`` with labels ``y`` in ``0..K-1`` by Adam on the
    cross-entropy, ``epochs`` passes in shuffled mini-batches; returned in eval mode."""
    if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[2] != x.shape[3]:
        raise ValueError(f"x: expected square images of shape (N, C, H, H), got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    if not isinstance(y, Tensor) or y.shape != (x.shape[0],) or y.dtype not in (torch.int32, torch.int64) \
            or int(y.min()) < 0:
        raise ValueError(f"y: expected {x.shape[0]} integer labels >= 0, got "
                         f"{tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs: expected a positive integer, got {epochs!r}")
    g = torch.Generator().manual_seed(0) if generator is None else generator
    with torch.random.fork_rng():
        torch.manual_seed(int(torch.randint(2**31, (1,), generator=g)))
        net = FeatureCNN(x.shape[1], x.shape[2], int(y.max()) + 1, feature_dim).to(x.device, x.dtype)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=g).to(x.device)
        for idx in perm.split(batch_size):
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return net.eval()
