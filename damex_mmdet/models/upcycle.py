"""Start every expert of a DAMEX model from a dense DINO checkpoint."""
import inspect
from typing import Dict, List, Mapping

from mmcv.cnn.bricks.transformer import FFN
from torch import Tensor

from .detectors import DAMEX

# The activation mmcv's FFN uses when its config names none.
_DENSE_DEFAULT_ACT = inspect.signature(
    FFN.__init__).parameters['act_cfg'].default


def _dense_act_cfg(model: DAMEX, moe_name: str) -> dict:
    """The act_cfg of the dense FFN the MoE ``moe_name`` replaces (its
    layer's ``ffn_cfg``)."""
    layer = model.get_submodule(moe_name.rsplit('.', 1)[0])
    ffn_cfg = getattr(layer, 'ffn_cfg', {}) or {}
    return dict(ffn_cfg.get('act_cfg', _DENSE_DEFAULT_ACT))


def upcycling_mismatches(model: DAMEX) -> List[str]:
    """Why an upcycled ``model`` would not compute what the dense model
    computes.

    At step 0 every expert equals the dense FFN (or its share of the dense
    FFN's hidden units next to a shared expert, see
    ``MoEFFN.upcycled_state``), so the MoE output equals the dense output
    exactly when the routing weights of a token sum to 1 (renormalised
    weights; with k=1 and ``normalize_weights=None`` the expert output is
    scaled by its gate probability, about 1/E with a fresh gate), no token
    is dropped by a capacity, and the experts use the dense FFN's
    activation. With a shared expert as wide as the dense FFN only the
    activation matters.

    Returns:
        list[str]: One line per mismatch, naming the MoE layer and the
        config fix; empty when the upcycled model reproduces the dense one.
    """
    problems = []
    for name, moe in model.named_moe_layers():
        # A silent start (shared expert = the dense FFN, routed outputs
        # zero) is exact whatever the routing weights and capacity.
        routing_matters = not moe.upcycles_with_silent_experts
        if routing_matters and not moe.renormalises_weights:
            problems.append(
                f'{name}: top_k={moe.top_k}, normalize_weights='
                f'{moe.normalize_weights} scales each expert output by its '
                f'gate probability (about 1/{moe.num_experts} with a fresh '
                f'gate); set model.moe_cfg.normalize_weights=True')
        if routing_matters and moe.capacity_factor is not None:
            problems.append(
                f'{name}: capacity_factor={moe.capacity_factor} drops the '
                f'tokens over capacity; set model.moe_cfg.capacity_factor='
                f'None')
        dense_act = {k: v for k, v in _dense_act_cfg(model, name).items()
                     if k != 'inplace'}
        expert_act = {k: v for k, v in moe.act_cfg.items() if k != 'inplace'}
        if dense_act != expert_act:
            problems.append(
                f'{name}: the experts use act_cfg={expert_act}, the dense FFN '
                f'{dense_act}; drop act_cfg from model.moe_cfg')
    return problems


def upcycle_dense_state_dict(model: DAMEX,
                             dense_state: Mapping[str, Tensor],
                             exact: bool = True) -> Dict[str, Tensor]:
    """Turn a dense DINO state dict into one for ``model``.

    Each MoE FFN of ``model`` takes the weights of the dense FFN at the same
    place in every expert (``MoEFFN.upcycled_state``); its gate keeps
    ``model``'s own (freshly initialised) weights. All other entries are
    copied unchanged.

    Args:
        model (DAMEX): The target model, built from the config that will train
            from the result; its MoE placement decides which FFNs are
            replicated.
        dense_state (Mapping[str, Tensor]): A DINO ``state_dict``.
        exact (bool): Require that ``model`` with the result predicts what the
            dense model predicts (see :func:`upcycling_mismatches`); raise
            ValueError otherwise. False accepts an inexact start.

    Returns:
        dict[str, Tensor]: A state dict that loads strictly into ``model``.
    """
    problems = upcycling_mismatches(model) if exact else []
    if problems:
        raise ValueError(
            'the upcycled model would not predict what the dense model '
            'predicts:\n  ' + '\n  '.join(problems) +
            '\nfix these in the DAMEX config you train from the upcycled '
            'checkpoint, or accept an inexact start (exact=False, '
            'tools/upcycle_checkpoint.py --inexact).')
    state = dict(dense_state)
    own_state = model.state_dict()
    for name, moe in model.named_moe_layers():
        prefix = f'{name}.'
        ffn_state = {key[len(prefix):]: state.pop(key)
                     for key in list(state) if key.startswith(prefix)}
        if not ffn_state:
            raise KeyError(
                f'the dense checkpoint has no FFN at {name}: upcycle a DINO '
                f'checkpoint with the same encoder/decoder depth as the '
                f'config.')
        for key, value in moe.upcycled_state(ffn_state).items():
            state[prefix + key] = value
        state[f'{prefix}gate.weight'] = own_state[f'{prefix}gate.weight']
    return state
