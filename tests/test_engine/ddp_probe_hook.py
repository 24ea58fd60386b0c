"""A hook recording, per rank, the images trained on and MoE checksums."""
import json
import os.path as osp

import torch
from mmdet.registry import HOOKS
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper


@HOOKS.register_module()
class DDPProbeHook(Hook):
    """Write ``probe_rank<r>.json``: image paths per iteration, and the sum of
    every gate and expert parameter after training."""

    def __init__(self) -> None:
        self.images = []

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        self.images.append([s.metainfo['img_path']
                            for s in data_batch['data_samples']])

    def after_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(
            runner.model) else runner.model
        sums = {name: float(param.detach().double().sum())
                for name, param in model.named_parameters()
                if '.ffn.gate' in name or '.ffn.expert_' in name}
        path = osp.join(runner.work_dir, f'probe_rank{get_rank()}.json')
        with open(path, 'w') as f:
            json.dump(dict(images=self.images, moe_sums=sums), f)
