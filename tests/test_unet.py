"""The U-Net: its level structure, attention placement, zero-initialised blocks, dropout and option checks."""
import pytest
import torch
from test_image_nets import images, perturb_zero_init, tiny

import scoresde as sd
from scoresde.nets import UNet
from scoresde.nets.unet import _ResBlock, _SelfAttention


def _feature_sizes(net, x, t, kind):
    """Spatial sizes of the inputs every module of type ``kind`` sees in one forward pass."""
    seen = []
    hooks = [m.register_forward_hook(lambda m, inp, out: seen.append(tuple(inp[0].shape[2:])))
             for m in net.modules() if isinstance(m, kind)]
    net(x, t)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("size, channel_mult, attn", [(8, (1, 2, 2), (4,)), (28, (1, 2, 2), (14, 7)), (32, (1, 1, 2, 2), (8,)),
                                                      (16, (1, 2), ())])
def test_levels_halve_the_resolution_and_attention_sits_where_asked(size, channel_mult, attn):
    blocks = 2
    net = tiny("unet", 1, size, channel_mult=channel_mult, num_res_blocks=blocks, attn_resolutions=attn)
    x, t = images(2, 1, size)
    levels = [size // 2**k for k in range(len(channel_mult))]
    bottom = levels[-1]
    # down: `blocks` attending blocks per level; middle: one; up: blocks + 1 per level
    expected = sorted([r for r in levels if r in attn] * (2 * blocks + 1) + [bottom])
    assert sorted(s[0] for s in _feature_sizes(net, x, t, _SelfAttention)) == expected
    res_sizes = _feature_sizes(net, x, t, _ResBlock)
    assert len(res_sizes) == len(levels) * (2 * blocks + 1) + 2
    assert {s[0] for s in res_sizes} == set(levels) and all(h == w for h, w in res_sizes)


def test_widths_follow_channels_times_channel_mult():
    net = tiny("unet", 3, 16, channels=8, channel_mult=(1, 2, 3), num_res_blocks=1, attn_resolutions=())
    assert net.inp.out_channels == 8 and net.mid1.conv1.out_channels == 24 and net.out.in_channels == 8
    assert net.out.out_channels == 3
    widths = [m.conv1.out_channels for m in net.modules() if isinstance(m, _ResBlock)]
    assert set(widths) == {8, 16, 24}


def test_blocks_start_as_their_skip_path():
    # conv2 of a residual block and the attention output start at zero: block(h) == skip(h) exactly
    torch.manual_seed(0)
    e = torch.randn(3, 16)
    h = torch.randn(3, 8, 4, 4)
    same, wider = _ResBlock(8, 8, 16, 0.0, 4), _ResBlock(8, 16, 16, 0.0, 4)
    assert torch.equal(same(h, e), h)
    assert torch.equal(wider(h, e), wider.skip(h))
    assert torch.equal(_SelfAttention(8, 2, 4)(h), h)


def test_film_scale_and_shift_follow_the_closed_form():
    # Res(h, e) = skip(h) + conv2(drop(silu(GN(z) (1 + gamma) + beta))), (gamma, beta) = W silu(e)
    torch.manual_seed(1)
    block = perturb_zero_init(_ResBlock(4, 4, 6, 0.0, 2)).double()
    h, e = torch.randn(2, 4, 3, 3, dtype=torch.float64), torch.randn(2, 6, dtype=torch.float64)
    z = block.conv1(torch.nn.functional.silu(block.norm1(h)))
    gamma, beta = (block.film.weight @ torch.nn.functional.silu(e).T + block.film.bias[:, None]).T.chunk(2, dim=1)
    ref = h + block.conv2(torch.nn.functional.silu(block.norm2(z) * (1 + gamma[..., None, None]) + beta[..., None, None]))
    torch.testing.assert_close(block(h, e), ref, rtol=1e-12, atol=1e-12)


def test_dropout_is_active_in_training_only():
    net = perturb_zero_init(tiny("unet", dropout=0.5))
    x, t = images(2, 1, 8)
    net.train()
    assert not torch.equal(net(x, t), net(x, t))
    net.eval()
    assert torch.equal(net(x, t), net(x, t))


def test_odd_bottom_resolution_is_handled():
    # 28 -> 14 -> 7: the 7x7 level is down-sampled no further, so the up path meets every skip exactly
    net = perturb_zero_init(tiny("unet", 1, 28, channel_mult=(1, 2, 2), attn_resolutions=(7,)))
    x, t = images(2, 1, 28)
    assert net(x, t).shape == (2, 1, 28, 28)


@pytest.mark.parametrize("option, value, message", [
    ("channel_mult", (1, 2, 2, 2), r"image_size: 28 cannot be halved 3 times \(channel_mult=\[1, 2, 2, 2\] has 4 levels\); "
                                   r"allowed: multiples of 8, or fewer levels \(at most 3 for 28\)"),
    ("attn_resolutions", (16,), r"attn_resolutions: \[16\] are not feature-map sizes of this net; allowed: \[28, 14\]"),
    ("norm_groups", 3, r"norm_groups: 3 does not divide the level width 8"),
    ("num_heads", 3, r"num_heads: 3 does not divide the width 8 of the attending level at resolution 28"),
    ("dropout", 1.0, r"dropout: expected a number in \[0, 1\), got 1.0"),
    ("channel_mult", (), r"channel_mult: expected a list of positive integers \(at least one\), got \(\)"),
    ("channel_mult", "12", r"channel_mult: expected a list of positive integers"),
    ("num_res_blocks", 0, r"num_res_blocks: expected a positive integer, got 0"),
    ("channels", -8, r"channels: expected a positive integer, got -8"),
])
def test_bad_options_are_named(option, value, message):
    kwargs = {"channels": 8, "channel_mult": (1, 2), "num_res_blocks": 1, "attn_resolutions": (28,), "norm_groups": 4,
              option: value}
    with pytest.raises(ValueError, match=message):
        UNet(1, sd.VPSDE(), image_size=28, **kwargs)


def test_options_from_json_lists():
    # a checkpoint stores the keyword arguments as JSON: lists in place of tuples
    net = UNet(1, sd.VPSDE(), image_size=8, channels=8, channel_mult=[1, 2], attn_resolutions=[4], norm_groups=4)
    assert net(*images(1, 1, 8)).shape == (1, 1, 8, 8)
