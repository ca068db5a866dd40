import torch

from mnistkit.network import Network


def test_shapes_and_log_probabilities():
    net = Network().eval()
    out = net(torch.zeros(3, 1, 28, 28))
    assert out.shape == (3, 10)
    assert torch.allclose(out.exp().sum(dim=1), torch.ones(3), atol=1e-5)


def test_parameter_names_match_the_2018_network():
    names = {k: tuple(v.shape) for k, v in Network().state_dict().items()}
    assert names == {
        "conv1.weight": (10, 1, 5, 5),
        "conv1.bias": (10,),
        "conv2.weight": (20, 10, 5, 5),
        "conv2.bias": (20,),
        "fc1.weight": (50, 320),
        "fc1.bias": (50,),
        "fc2.weight": (10, 50),
        "fc2.bias": (10,),
    }
