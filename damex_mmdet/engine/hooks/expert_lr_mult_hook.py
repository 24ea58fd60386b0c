"""Freeze some experts of every MoE layer, or train them at a lower rate."""
from typing import Dict, List, Sequence, Tuple

import torch
from mmdet.registry import HOOKS
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from torch import Tensor, nn

from ...models.layers import MoEFFN


@HOOKS.register_module()
class ExpertLrMultHook(Hook):
    """Scale the learning rate of chosen experts; ``lr_mult=0`` freezes them.

    The experts of an MoE layer are slices of stacked tensors (``expert_w1``
    (E, H, D), ...), so mmengine's ``paramwise_cfg`` cannot reach one expert.
    This hook remembers the chosen slices before every iteration and after
    the optimizer step sets them to ``before + lr_mult * (after - before)``.
    For Adam, AdamW and SGD (with or without momentum) that is exactly a
    step with learning rate ``lr_mult * lr`` for those slices: their update
    is proportional to the learning rate, weight decay included, and their
    moment estimates do not depend on it. Scaling the gradient instead would
    not work: Adam normalises it away, and AdamW decays weights that get no
    gradient at all.

    With ``lr_mult=0`` the slices are restored bit for bit, and their
    gradients are also zeroed during backward, so that they do not count in
    gradient clipping's norm either, just as frozen parameters would not.

    Args:
        experts (Sequence[int]): Expert indices, the same in every MoE layer,
            e.g. the trained model's experts when growing it.
        lr_mult (float): Learning-rate multiplier in [0, 1]. Defaults to 0.
        gate_rows (bool): Also scale those experts' gate rows. Defaults to
            False: the gate keeps learning, so it can route new data to new
            experts and away from the old ones.
    """

    priority = 'HIGHEST'

    def __init__(self, experts: Sequence[int], lr_mult: float = 0.,
                 gate_rows: bool = False) -> None:
        if isinstance(experts, int) or not experts:
            raise ValueError(
                f'ExpertLrMultHook.experts must be a non-empty list of expert '
                f'indices, got {experts!r}')
        if not 0. <= lr_mult <= 1.:
            raise ValueError(
                f'ExpertLrMultHook.lr_mult must be in [0, 1] (0 freezes), got '
                f'{lr_mult!r}')
        self.experts = sorted(set(int(e) for e in experts))
        self.lr_mult = float(lr_mult)
        self.gate_rows = gate_rows
        self._params: List[Tuple[str, nn.Parameter]] = []
        self._before: Dict[str, Tensor] = {}
        self._grad_hooks = []

    def before_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(
            runner.model) else runner.model
        self._params = self.expert_parameters(model)
        if self.lr_mult == 0.:
            for _, param in self._params:
                mask = torch.ones(param.shape[0], *[1] * (param.dim() - 1),
                                  dtype=param.dtype, device=param.device)
                mask[self.experts] = 0
                self._grad_hooks.append(
                    param.register_hook(lambda grad, mask=mask: grad * mask))

    def expert_parameters(self, model: nn.Module
                          ) -> List[Tuple[str, nn.Parameter]]:
        """``(name, parameter)`` of every stacked expert tensor (and gate).

        Raises:
            ValueError: The model has no MoE layer, or an expert index is
                out of range.
        """
        params = []
        for name, module in model.named_modules():
            if not isinstance(module, MoEFFN):
                continue
            bad = [e for e in self.experts
                   if not 0 <= e < module.num_experts]
            if bad:
                raise ValueError(
                    f'ExpertLrMultHook.experts has {bad}, but {name} has '
                    f'{module.num_experts} experts (valid 0..'
                    f'{module.num_experts - 1}).')
            for param_name, param in module.named_parameters():
                if param_name.startswith('expert_') or (
                        self.gate_rows and param_name == 'gate.weight'):
                    params.append((f'{name}.{param_name}', param))
        if not params:
            raise ValueError(
                'ExpertLrMultHook found no MoE layer in the model; it only '
                'applies to DAMEX / MoE models.')
        return params

    def before_train_iter(self, runner, batch_idx: int,
                          data_batch=None) -> None:
        self._before = {name: param.detach()[self.experts].clone()
                        for name, param in self._params}

    @torch.no_grad()
    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs=None) -> None:
        for name, param in self._params:
            before = self._before[name]
            if self.lr_mult == 0.:
                param[self.experts] = before
            else:
                after = param[self.experts]
                param[self.experts] = before + self.lr_mult * (after - before)

    def after_train(self, runner) -> None:
        for handle in self._grad_hooks:
            handle.remove()
        self._grad_hooks = []
