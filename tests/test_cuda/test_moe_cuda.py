"""MoEFFN on CUDA: the same outputs and gradients as on CPU, and a dispatch
that repeats bit for bit with deterministic algorithms on."""
import copy
from contextlib import nullcontext
from typing import Dict

import pytest
import torch

from damex_mmdet.models.layers import MoEFFN

from .conftest import CUDA

EMBED_DIMS, HIDDEN, EXPERTS = 32, 64, 4
# Dispatch variants: dropless top-1, a capacity that drops assignments,
# top-2, routing forced per sample (DAMEX's oracle), and samples padded to a
# common length (a capacity on their real tokens, top-2).
CASES = {
    'dropless': dict(),
    'capacity': dict(capacity_factor=0.5),
    'top2': dict(top_k=2),
    'forced': dict(),
    'padded': dict(capacity_factor=0.5, top_k=2),
}


def make_moe(case: str, seed: int = 0) -> MoEFFN:
    torch.manual_seed(seed)
    moe = MoEFFN(embed_dims=EMBED_DIMS, feedforward_channels=HIDDEN,
                 num_experts=EXPERTS, **CASES[case])
    with torch.no_grad():
        # Decisive logits: the two devices' float32 rounding cannot swap
        # the experts of a token.
        moe.gate.weight.normal_(std=1.)
    return moe


def run(moe: MoEFFN, case: str, x: torch.Tensor, grad: torch.Tensor
        ) -> Dict[str, torch.Tensor]:
    """Forward and backward; the output, chosen experts and gradients."""
    x = x.detach().requires_grad_()
    forced = torch.arange(x.size(0), device=x.device) % EXPERTS
    # Sample b has its first N - N * b // (2 * B) tokens real.
    num_samples, num_tokens = x.shape[:2]
    lengths = num_tokens - num_tokens * torch.arange(
        num_samples, device=x.device) // (2 * num_samples)
    padding = (torch.arange(num_tokens, device=x.device)[None]
               >= lengths[:, None]) if case == 'padded' else None
    with moe.force_experts(forced) if case == 'forced' else nullcontext(), \
            moe.ignore_padding(padding):
        out = moe(x)
    out.backward(grad)
    result = dict(out=out.detach(), experts=moe.last_expert_indices,
                  kept=moe.last_kept, x_grad=x.grad)
    result.update({name: param.grad for name, param in moe.named_parameters()
                   if param.grad is not None})
    return result


def inputs(num_samples: int, num_tokens: int, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    shape = (num_samples, num_tokens, EMBED_DIMS)
    return (torch.randn(shape, generator=generator),
            torch.randn(shape, generator=generator))


@pytest.mark.parametrize('case', CASES)
@pytest.mark.usefixtures('float32_matmuls')
@pytest.mark.cuda
def test_moe_on_cuda_equals_cpu(case):
    moe = make_moe(case)
    cuda_moe = copy.deepcopy(moe).cuda()
    x, grad = inputs(3, 200)
    expected = run(moe, case, x, grad)
    result = run(cuda_moe, case, x.cuda(), grad.cuda())
    assert result.keys() == expected.keys()
    if case == 'capacity':
        assert moe.last_num_dropped > 0  # the capacity does drop
    for name, value in expected.items():
        torch.testing.assert_close(result[name].cpu(), value, rtol=1e-4,
                                   atol=1e-4, msg=f'{case}: {name}')


@pytest.mark.parametrize('case', CASES)
@pytest.mark.parametrize('device', ['cpu', CUDA])
@pytest.mark.usefixtures('deterministic_algorithms')
def test_dispatch_repeats_bit_for_bit(device, case):
    # Enough tokens per expert that atomic accumulations, if the dispatch
    # used any, would reorder between runs on a GPU.
    x, grad = inputs(4, 2048)
    runs = [run(make_moe(case).to(device), case, x.to(device),
                grad.to(device)) for _ in range(2)]
    for name, value in runs[0].items():
        assert torch.equal(runs[1][name], value), f'{case}: {name}'

