"""Time MoEFFN against a dense mmcv FFN of the same width (forward, forward+backward).

Dense and MoE runs are interleaved round by round, so slow drifts of a shared machine hit
both alike; each entry is the median over the rounds. Forward is timed under no_grad,
forward+backward with autograd (gradient of ``out.sum()``), gradients set to None before
each run as ``optimizer.zero_grad()`` does in training. The dense FFN gets the tokens
flattened to (T, D), its fastest form: on (B, N, D) its in-place ReLU acts on a view of the
linear's output and autograd adds a copy of the hidden activations in backward (about 15%
on CPU), which would flatter the MoE (it flattens tokens itself). Routing:

- balanced: the default random gate, tokens spread over all experts;
- pure: dataset-pure routing, every token to the same expert(s): inputs carry a constant
  feature that the gate weights turn into constant logits (real softmax weights, as for a
  DAMEX-trained gate on one dataset's batch).

Expert backends (``MoEFFN(expert_backend=...)``), side by side in one run: ``moe`` rows use
``'auto'`` (one grouped GEMM where this torch has it, no host sync), ``moe-loop`` rows the
Python loop over experts.

Usage:
    python benchmarks/bench_moe_layer.py [--device cuda] [--full] [--rounds 3]
        [--threads 1 --cpu-time] [--top-k 1] [--backends auto loop]

On a CPU shared with other jobs, wall-clock times mostly measure the other jobs;
``--threads 1 --cpu-time`` times the process's own CPU time instead, which keeps the ratios
stable there.
"""
import argparse
import statistics
import time
from typing import Callable, Dict, List, Tuple

import torch
from mmcv.cnn.bricks.transformer import FFN

from damex_mmdet.models.layers.moe import MoEFFN

EMBED_DIMS, HIDDEN = 256, 2048
TARGET_RATIO = 1.05
BACKEND_LAYER_NAMES = {'auto': 'moe', 'loop': 'moe-loop', 'grouped_mm': 'moe-gmm'}
LAYER_BACKENDS = {layer: backend for backend, layer in BACKEND_LAYER_NAMES.items()}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--full', action='store_true', help='add 50k tokens')
    parser.add_argument('--rounds', type=int, default=3, help='timed rounds (median)')
    parser.add_argument('--experts', type=int, nargs='+', default=[4, 8, 12])
    parser.add_argument('--tokens', type=int, nargs='+', default=None,
                        help='token counts instead of 1k, 2k and 10k (and 50k with --full)')
    parser.add_argument('--top-k', type=int, nargs='+', default=[1, 2], help='k values')
    parser.add_argument('--backends', nargs='+', default=['auto', 'loop'],
                        choices=sorted(BACKEND_LAYER_NAMES), help='MoEFFN expert_backend')
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    parser.add_argument('--cpu-time', action='store_true',
                        help='time process CPU time instead of wall clock (CPU only)')
    return parser.parse_args()


def make_input(num_tokens: int, device: torch.device) -> torch.Tensor:
    """(B, N, D) tokens, N = 1000 queries per sample where T allows; feature 0 is 1."""
    queries = 1000 if num_tokens % 1000 == 0 else num_tokens
    x = torch.randn(num_tokens // queries, queries, EMBED_DIMS, device=device)
    x[..., 0] = 1.
    return x


def make_moe(num_experts: int, top_k: int, routing: str, backend: str,
             device: torch.device) -> MoEFFN:
    moe = MoEFFN(embed_dims=EMBED_DIMS, feedforward_channels=HIDDEN, num_experts=num_experts,
                 top_k=top_k, expert_backend=backend)
    if routing == 'pure':
        with torch.no_grad():
            moe.gate.weight.zero_()
            # Constant logits (8, 4, 0, ...) on feature 0: experts 0 (and 1) for every token.
            moe.gate.weight[0, 0], moe.gate.weight[1, 0] = 8., 4.
    return moe.to(device)


def sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def timer(module: torch.nn.Module, x: torch.Tensor, backward: bool, device: torch.device,
          clock: Callable[[], float]) -> Callable[[], float]:
    x = x.detach().requires_grad_(backward)

    def run() -> float:
        # As a training step after optimizer.zero_grad(): backward writes fresh gradients
        # instead of accumulating into old ones (an extra pass over E expert-sized tensors).
        module.zero_grad(set_to_none=True)
        x.grad = None
        sync(device)
        start = clock()
        if backward:
            module(x).sum().backward()
        else:
            with torch.no_grad():
                module(x)
        sync(device)
        return clock() - start

    return run


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.cpu_time and device.type != 'cpu':
        raise ValueError('--cpu-time only measures CPU work')
    clock = time.process_time if args.cpu_time else time.perf_counter
    torch.manual_seed(0)
    token_counts = args.tokens or [1_000, 2_000, 10_000] + ([50_000] if args.full else [])
    configs = [(BACKEND_LAYER_NAMES[b], e, k, r) for e in args.experts for k in args.top_k
               for r in ('balanced', 'pure') for b in args.backends]
    results: Dict[Tuple, float] = {}
    print(f'device={device} threads={torch.get_num_threads()} D={EMBED_DIMS} H={HIDDEN} '
          f'rounds={args.rounds} (median) clock={"cpu" if args.cpu_time else "wall"}')

    for num_tokens in token_counts:
        x = make_input(num_tokens, device)
        inputs = {('dense', 0, 0, '-'): x.reshape(-1, EMBED_DIMS)}
        modules = {('dense', 0, 0, '-'): FFN(embed_dims=EMBED_DIMS,
                                             feedforward_channels=HIDDEN).to(device)}
        modules.update({(layer, e, k, r): make_moe(e, k, r, LAYER_BACKENDS[layer], device)
                        for layer, e, k, r in configs})
        for backward in (False, True):
            runs = {name: timer(module, inputs.get(name, x), backward, device, clock)
                    for name, module in modules.items()}
            for run in runs.values():  # warm-up
                run()
            times: Dict[Tuple, List[float]] = {name: [] for name in runs}
            for _ in range(args.rounds):
                for name, run in runs.items():
                    times[name].append(run())
            for name, values in times.items():
                results[(num_tokens, backward) + name] = statistics.median(values)
        for name, module in modules.items():
            if name[0] != 'dense':
                with torch.no_grad():
                    module(x)  # record the routing of one forward for the table
                results[(num_tokens, 'maxload') + name] = (
                    module.last_expert_counts.max().item() / (num_tokens * name[2]))

    header = (f'{"tokens":>7} {"layer":>8} {"E":>3} {"k":>2} {"routing":>9} {"max load":>9} '
              f'{"fwd ms":>9} {"fwd+bwd ms":>11} {"fwd x":>6} {"f+b x":>6}')
    print(header)
    print('-' * len(header))
    for num_tokens in token_counts:
        dense_fwd = results[(num_tokens, False, 'dense', 0, 0, '-')]
        dense_bwd = results[(num_tokens, True, 'dense', 0, 0, '-')]
        print(f'{num_tokens:>7} {"dense":>8} {"-":>3} {"-":>2} {"-":>9} {"-":>9} '
              f'{dense_fwd * 1e3:>9.1f} {dense_bwd * 1e3:>11.1f} {1:>6.2f} {1:>6.2f}')
        for layer, e, k, r in configs:
            fwd = results[(num_tokens, False, layer, e, k, r)]
            bwd = results[(num_tokens, True, layer, e, k, r)]
            load = results[(num_tokens, 'maxload', layer, e, k, r)]
            print(f'{num_tokens:>7} {layer:>8} {e:>3} {k:>2} {r:>9} {load:>9.2f} '
                  f'{fwd * 1e3:>9.1f} {bwd * 1e3:>11.1f} {fwd / dense_fwd:>6.2f} '
                  f'{bwd / dense_bwd:>6.2f}')

    if 1 not in args.top_k:
        return
    print(f'\nTop-1 MoE / dense fwd+bwd ratios (target <= {TARGET_RATIO:.2f}x):')
    print(f'{"tokens":>7} {"routing":>9} ' + ' '.join(
        f'{f"{layer} E={e}":>13}' for layer in dict.fromkeys(c[0] for c in configs)
        for e in args.experts))
    worst: Dict[str, float] = {}
    for num_tokens in token_counts:
        dense_bwd = results[(num_tokens, True, 'dense', 0, 0, '-')]
        for r in ('balanced', 'pure'):
            cells = []
            for layer in dict.fromkeys(c[0] for c in configs):
                for e in args.experts:
                    ratio = results[(num_tokens, True, layer, e, 1, r)] / dense_bwd
                    worst[layer] = max(worst.get(layer, 0.), ratio)
                    cells.append(f'{ratio:>12.2f}x')
            print(f'{num_tokens:>7} {r:>9} ' + ' '.join(cells))
    for layer, ratio in worst.items():
        print(f'{layer}: top-1 fwd+bwd <= {TARGET_RATIO:.2f}x dense at every size: '
              f'{"PASS" if ratio <= TARGET_RATIO else "FAIL"} (worst {ratio:.2f}x)')

if __name__ == '__main__':
    main()
