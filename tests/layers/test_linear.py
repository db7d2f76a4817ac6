"""lmlab's Linear: an nn.Linear whose few-row inference may run the native kernel."""

import torch

from lmlab.layers.linear import Linear


def test_linear_layer_is_an_nn_linear_with_the_same_results_and_gradients():
    torch.manual_seed(0)
    layer = Linear(24, 10)
    plain = torch.nn.Linear(24, 10)
    plain.load_state_dict(layer.state_dict())
    assert isinstance(layer, torch.nn.Linear) and list(layer.state_dict()) == ["weight", "bias"]
    for shape in [(1, 24), (3, 1, 24), (20, 24)]:
        x = torch.randn(shape)
        with torch.inference_mode():
            torch.testing.assert_close(layer(x), plain(x), rtol=1e-5, atol=1e-6)
    x = torch.randn(2, 24, requires_grad=True)
    layer(x).sum().backward()
    assert layer.weight.grad is not None and x.grad is not None
