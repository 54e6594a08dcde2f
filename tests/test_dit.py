"""DiT: patchify / unpatchify, the sin-cos position embedding, adaLN-Zero, a shape table, option checks."""
import math

import pytest
import torch
from test_image_nets import images, perturb_zero_init, tiny

import scoresde as sd
from scoresde.nets import DiT
from scoresde.nets.dit import DiTBlock, patchify, sincos_position_embedding_2d, unpatchify


@pytest.mark.parametrize("C, size, p", [(1, 8, 1), (1, 8, 2), (3, 8, 4), (3, 28, 7), (2, 32, 8), (1, 6, 6)])
def test_patchify_unpatchify_round_trip_exactly(C, size, p):
    x = torch.randn(2, C, size, size, generator=torch.Generator().manual_seed(0))
    tokens = patchify(x, p)
    g = size // p
    assert tokens.shape == (2, g * g, p * p * C)
    assert torch.equal(unpatchify(tokens, p, C), x)
    tok = torch.randn(tokens.shape, generator=torch.Generator().manual_seed(1))
    assert torch.equal(patchify(unpatchify(tok, p, C), p), tok)


def test_patch_layout_is_row_major_tokens_of_row_column_channel_values():
    # token n = i g + j holds x[c, i p + a, j p + b] at position (a p + b) C + c
    C, size, p = 2, 6, 3
    x = torch.arange(C * size * size, dtype=torch.float64).reshape(1, C, size, size)
    tokens, g = patchify(x, p)[0], size // p
    for i in range(g):
        for j in range(g):
            for a in range(p):
                for b in range(p):
                    for c in range(C):
                        assert tokens[i * g + j, (a * p + b) * C + c] == x[0, c, i * p + a, j * p + b]


def test_position_embedding_equals_its_closed_form():
    grid, dim = 3, 8
    pe = sincos_position_embedding_2d(grid, dim)
    assert pe.shape == (grid * grid, dim) and pe.dtype == torch.float64
    q = dim // 4
    for i in range(grid):
        for j in range(grid):
            w = [10000.0 ** (-k / q) for k in range(q)]
            # DiT's layout: the column half first (issue 18); 'row_first' is the layout before it
            ref = [math.sin(j * o) for o in w] + [math.cos(j * o) for o in w] + \
                  [math.sin(i * o) for o in w] + [math.cos(i * o) for o in w]
            torch.testing.assert_close(pe[i * grid + j], torch.tensor(ref, dtype=torch.float64), rtol=0, atol=1e-15)
            old = ref[2 * q:] + ref[:2 * q]
            torch.testing.assert_close(sincos_position_embedding_2d(grid, dim, order="row_first")[i * grid + j],
                                       torch.tensor(old, dtype=torch.float64), rtol=0, atol=1e-15)
    net = tiny("dit", image_size=8, patch_size=2, hidden_size=32)
    torch.testing.assert_close(net.pos_embed, sincos_position_embedding_2d(4, 32).float(), rtol=0, atol=0)
    assert "pos_embed" not in net.state_dict()  # fixed: rebuilt from the arguments, not learned
    assert all(p is not net.pos_embed for p in net.parameters())
    with pytest.raises(ValueError, match="dim: expected a multiple of 4"):
        sincos_position_embedding_2d(3, 6)


def test_every_block_is_the_identity_at_initialisation():
    net = tiny("dit", depth=3)
    g = torch.Generator().manual_seed(0)
    z, c = torch.randn(4, 16, 32, generator=g), torch.randn(4, 32, generator=g)
    for block in net.blocks:
        assert torch.equal(block(z, c), z)
    # the gates open once adaLN is trained: perturbed, the block is no longer the identity
    block = perturb_zero_init(DiTBlock(32, 2, 4.0))
    assert not torch.allclose(block(z, c), z)


def test_output_is_exactly_zero_at_initialisation_for_any_input():
    net = tiny("dit", num_classes=10)
    x, t = images(4, 1, 8)
    assert torch.equal(net(100 * x, t, torch.tensor([0, 3, 9, 10])), torch.zeros_like(x))


def test_adaln_block_follows_its_closed_form():
    # z' = z + a1 MHSA(LN(z)(1 + g1) + b1); z'' = z' + a2 MLP(LN(z')(1 + g2) + b2)
    torch.manual_seed(2)
    block = perturb_zero_init(DiTBlock(8, 2, 2.0), scale=0.5).double()
    z, c = torch.randn(2, 5, 8, dtype=torch.float64), torch.randn(2, 8, dtype=torch.float64)
    b1, g1, a1, b2, g2, a2 = (v[:, None] for v in block.ada(torch.nn.functional.silu(c)).chunk(6, dim=1))
    ln = lambda h: torch.nn.functional.layer_norm(h, (8,), eps=1e-6)
    mha = torch.nn.MultiheadAttention(8, 2, batch_first=True, dtype=torch.float64)
    with torch.no_grad():  # the same weights in torch's reference attention
        mha.in_proj_weight.copy_(block.attn.qkv.weight)
        mha.in_proj_bias.copy_(block.attn.qkv.bias)
        mha.out_proj.weight.copy_(block.attn.proj.weight)
        mha.out_proj.bias.copy_(block.attn.proj.bias)
    h = ln(z) * (1 + g1) + b1
    z1 = z + a1 * mha(h, h, h, need_weights=False)[0]
    ref = z1 + a2 * block.mlp(ln(z1) * (1 + g2) + b2)
    torch.testing.assert_close(block(z, c), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("size, p", [(8, 1), (8, 2), (8, 4), (8, 8), (16, 2), (16, 4), (28, 2), (28, 4), (28, 7),
                                     (32, 2), (32, 4)])
@pytest.mark.parametrize("C", [1, 3])
def test_shape_table_over_patch_sizes_and_resolutions(size, p, C):
    net = perturb_zero_init(tiny("dit", C, size, patch_size=p, hidden_size=16, depth=1))
    seen = []
    net.blocks[0].register_forward_hook(lambda m, inp, out: seen.append(tuple(out.shape)))
    x, t = images(2, C, size)
    out = net(x, t)
    assert seen == [(2, (size // p) ** 2, 16)]  # (I/p)^2 tokens of width D
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert net.final.linear.out_features == p * p * C


@pytest.mark.parametrize("kwargs, message", [
    ({"patch_size": 3}, r"patch_size: 3 does not divide image_size=8; allowed: \[1, 2, 4, 8\]"),
    ({"patch_size": 0}, r"patch_size: expected a positive integer, got 0"),
    ({"hidden_size": 30}, r"hidden_size: expected a multiple of 4 \(the 2-D sin-cos position embedding\) and of num_heads=2, got 30"),
    ({"hidden_size": 36, "num_heads": 8}, r"hidden_size: expected a multiple of 4 .* and of num_heads=8, got 36"),
    ({"depth": 0}, r"depth: expected a positive integer, got 0"),
    ({"mlp_ratio": 0.0}, r"mlp_ratio: expected a positive number with hidden_size \* mlp_ratio >= 1, got 0.0"),
    ({"mlp_ratio": "4"}, r"mlp_ratio: expected a positive number"),
])
def test_bad_options_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DiT(1, sd.VPSDE(), image_size=8, **{"hidden_size": 32, "num_heads": 2, "depth": 1, **kwargs})


def test_wrong_resolution_names_the_expected_shape():
    net = tiny("dit", image_size=8)
    with pytest.raises(ValueError, match=r"x: expected shape \(B, 1, 8, 8\), got \(2, 1, 16, 16\)"):
        net(torch.zeros(2, 1, 16, 16), torch.ones(2))
