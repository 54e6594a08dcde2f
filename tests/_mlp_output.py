"""Random output weights for a ScoreMLP: its zero-initialised output layer would make every target look alike."""
import torch


def randomise_output(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        net.out.weight.copy_(torch.randn(net.out.weight.shape, generator=g))
        net.out.bias.copy_(torch.randn(net.out.bias.shape, generator=g))
    return net
