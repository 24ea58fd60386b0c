"""Two CPU processes (gloo) through mmengine's launcher, on one node or on
two, train like one."""
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from damex_mmdet.models.layers import MoEFFN

from ..conftest import REPO_ROOT, TINY_CONFIG

PIPELINE = """[
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=(64, 64), keep_ratio=True),
    dict(type='Pad', size=(64, 64)),
    dict(type='PackDetInputs')
]"""
# Exact comparison: plain SGD, frozen BN statistics, denoising noise below
# float32 resolution (DINO asserts a positive scale), and every image padded
# to one size, so that one process with a batch of 2 computes what 2
# processes with a batch of 1 compute together.
CONFIG = f"""
_base_ = '{TINY_CONFIG}'
custom_imports = dict(imports=['damex_mmdet', 'ddp_probe_hook'])
model = dict(
    backbone=dict(norm_eval=True),
    dn_cfg=dict(label_noise_scale=1e-9, box_noise_scale=1e-9))
train_dataloader = dict(batch_size={{batch}},
                        dataset=dict(pipeline={PIPELINE}))
optim_wrapper = dict(_delete_=True, type='OptimWrapper',
                     optimizer=dict(type='SGD', lr=0.01),
                     clip_grad=dict(max_norm=1.0))
train_cfg = dict(max_iters=3, val_interval=100)
default_hooks = dict(checkpoint=dict(interval=3, save_best=None))
custom_hooks = [dict(type='MixtureCheckHook'), dict(type='DDPProbeHook')]
randomness = dict(seed=0)
env_cfg = dict(dist_cfg=dict(backend='gloo'))
"""
TRAIN = str(REPO_ROOT / 'tools' / 'train.py')
TORCHRUN = Path(sys.executable).parent / 'torchrun'
# A launch takes about a minute on 2 cores.
LAUNCH_TIMEOUT = 300


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def env_with_hooks():
    """The environment, with this folder's hooks importable."""
    return dict(os.environ, PYTHONPATH=str(Path(__file__).parent))


def start(args, cwd, **env):
    """Start ``args`` in a process group of its own, so that a hung rank can
    be killed with its launcher (torchrun's workers keep the pipes open)."""
    return subprocess.Popen(args, cwd=cwd, env=dict(env_with_hooks(), **env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def finish(process):
    """The output of ``process`` once it exits; a launch that hangs (a lost
    rendezvous, a rank waiting on a collective) fails the test after
    ``LAUNCH_TIMEOUT`` seconds with its output instead of hanging the suite."""
    try:
        output = process.communicate(timeout=LAUNCH_TIMEOUT)[0]
    except subprocess.TimeoutExpired:
        # Every process of the group may have exited since the timeout.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        output = process.communicate()[0]
        pytest.fail(f'{process.args} hung for {LAUNCH_TIMEOUT} s:\n'
                    + output[-4000:])
    return output


def run(args, cwd, **env):
    process = start(args, cwd, **env)
    output = finish(process)
    assert process.returncode == 0, output[-5000:]


def one_box_per_image(source: Path, target: Path) -> None:
    """Copy a mixture keeping one box per image.

    DINO sizes its denoising groups by the batch's largest box count, so
    only images with equal counts give the same queries whether they share
    a process or not.
    """
    shutil.copytree(source, target)
    for ann_file in target.glob('*/annotations/*.json'):
        content = json.loads(ann_file.read_text())
        first = {}
        for ann in content['annotations']:
            first.setdefault(ann['image_id'], ann)
        content['annotations'] = list(first.values())
        ann_file.write_text(json.dumps(content))


@pytest.fixture(scope='module')
def one_process_run(tiny_mixture, tmp_path_factory):
    """A directory with the mixture (one box per image), ``single.py``
    (batch 2) and ``ddp.py`` (batch 1), and the one-process run of
    ``single.py`` in ``single/``."""
    root = tmp_path_factory.mktemp('distributed')
    one_box_per_image(tiny_mixture, root / 'data' / 'demo_mixture')
    (root / 'single.py').write_text(CONFIG.replace('{batch}', '2'))
    (root / 'ddp.py').write_text(CONFIG.replace('{batch}', '1'))
    run([sys.executable, TRAIN, 'single.py', '--work-dir', 'single'], root)
    return root


def assert_same_training(root: Path, work_dir: str) -> None:
    """Two ranks in ``root/work_dir`` trained like the one process of
    ``root/single``: same global batches, same final weights."""
    probes = [json.loads((root / work_dir / f'probe_rank{r}.json')
                         .read_text()) for r in (0, 1)]
    single = json.loads((root / 'single' / 'probe_rank0.json').read_text())
    # The sampler splits every global batch between the ranks.
    for step, images in enumerate(single['images']):
        ranks = [probe['images'][step] for probe in probes]
        assert sorted(ranks[0] + ranks[1]) == sorted(images)
        assert not set(ranks[0]) & set(ranks[1])
    # Gates and experts stay identical across ranks.
    assert probes[0]['moe_sums'] == probes[1]['moe_sums']

    # One checkpoint, written once, equal to the single-process model.
    assert sorted(p.name for p in (root / work_dir).glob('*.pth')) == [
        'iter_3.pth']
    expected = torch.load(root / 'single' / 'iter_3.pth')['state_dict']
    result = torch.load(root / work_dir / 'iter_3.pth')['state_dict']
    for key, value in expected.items():
        torch.testing.assert_close(result[key], value, rtol=1e-4, atol=1e-5,
                                   msg=key)


def test_two_processes_match_one_with_the_same_global_batch(one_process_run,
                                                            tmp_path):
    root = one_process_run
    # mmdet's usage: tools/dist_train.sh CONFIG GPUS [train.py options].
    run([str(REPO_ROOT / 'tools' / 'dist_train.sh'), 'ddp.py', '2',
         '--work-dir', 'ddp'], root, PORT=str(free_port()),
        PYTHON=sys.executable)
    assert_same_training(root, 'ddp')

    # A checkpoint from 2 processes loads in 1.
    run([sys.executable, str(REPO_ROOT / 'tools' / 'test.py'), 'ddp.py',
         str(root / 'ddp' / 'iter_3.pth'), '--work-dir', str(tmp_path)],
        root)


def test_two_nodes_match_one_process_with_the_same_global_batch(
        one_process_run):
    """Two torchrun agents meeting through a c10d rendezvous, as two
    machines of one process each would (here both on 127.0.0.1)."""
    root = one_process_run
    endpoint = f'127.0.0.1:{free_port()}'
    nodes = [start(
        [str(TORCHRUN), '--nnodes', '2', '--nproc_per_node', '1',
         '--node-rank', str(node), '--rdzv-backend', 'c10d',
         '--rdzv-endpoint', endpoint, '--rdzv-id', 'two_nodes', TRAIN,
         'ddp.py', '--launcher', 'pytorch', '--work-dir', 'nodes'], root)
        for node in (0, 1)]
    try:
        outputs = [finish(node) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
    for node, output in zip(nodes, outputs):
        assert node.returncode == 0, output[-4000:]
    assert_same_training(root, 'nodes')


def _ddp_worker(rank, port, results):
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}',
                            rank=rank, world_size=2)
    torch.manual_seed(0)
    layer = MoEFFN(embed_dims=8, feedforward_channels=16, num_experts=4)
    with torch.no_grad():
        # Tokens whose first feature is positive go to expert 0, negative
        # ones to expert 3; experts 1 and 2 never get a token.
        layer.gate.weight.zero_()
        layer.gate.weight[0, 0] = 10.
        layer.gate.weight[3, 0] = -10.
    model = DistributedDataParallel(layer)
    sign = 1. if rank == 0 else -1.
    for _ in range(3):
        tokens = torch.randn(1, 5, 8)
        tokens[..., 0] = sign * (1 + tokens[..., 0].abs())
        model(tokens).sum().backward()
    results[rank] = layer.expert_w1.grad.abs().sum(dim=(1, 2)).tolist()

    # 3 tokens, 4 experts, capacity factor 0.5: tutel's formula gives no slot
    # at all; every expert keeps at least one. Rank 1's tokens are all
    # padding: it routes nothing.
    layer = MoEFFN(embed_dims=8, feedforward_channels=16, num_experts=4,
                   capacity_factor=0.5)
    with torch.no_grad():
        layer.gate.weight.zero_()
        layer.gate.weight[0, 0] = 10.  # every token chooses expert 0
    model = DistributedDataParallel(layer, find_unused_parameters=False)
    tokens = torch.randn(1, 3, 8)
    tokens[..., 0] = 1 + tokens[..., 0].abs()
    for _ in range(3):
        with layer.ignore_padding(torch.full((1, 3), rank == 1)):
            model(tokens).sum().backward()
    results[f'capacity{rank}'] = (
        layer.expert_w1.grad.abs().sum(dim=(1, 2)).tolist())
    dist.destroy_process_group()


def test_experts_without_tokens_do_not_break_ddp():
    results = mp.Manager().dict()
    workers = mp.spawn(_ddp_worker, args=(free_port(), results), nprocs=2,
                       join=False)
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    # join returns False while a worker is still running; it raises if one
    # failed.
    while not workers.join(timeout=max(deadline - time.monotonic(), 0)):
        if time.monotonic() >= deadline:
            for worker in workers.processes:
                worker.kill()
            pytest.fail(f'the two DDP workers hung for {LAUNCH_TIMEOUT} s')
    grads = results[0]
    assert results[1] == grads
    assert grads[0] > 0 and grads[3] > 0 and grads[1] == grads[2] == 0
    grads = results['capacity0']
    assert results['capacity1'] == grads
    assert grads[0] > 0 and grads[1] == grads[2] == grads[3] == 0
