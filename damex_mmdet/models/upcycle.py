"""Start every expert of a DAMEX model from a dense DINO checkpoint."""
from typing import Dict, Mapping

from torch import Tensor

from .detectors import DAMEX
from .layers.moe import dense_ffn_to_moe_state


def upcycle_dense_state_dict(model: DAMEX,
                             dense_state: Mapping[str, Tensor]
                             ) -> Dict[str, Tensor]:
    """Turn a dense DINO state dict into one for ``model``.

    Each MoE FFN of ``model`` takes the weights of the dense FFN at the same
    place in every expert; its gate keeps ``model``'s own (freshly
    initialised) weights. All other entries are copied unchanged.

    Args:
        model (DAMEX): The target model; its MoE placement decides which FFNs
            are replicated.
        dense_state (Mapping[str, Tensor]): A DINO ``state_dict``.

    Returns:
        dict[str, Tensor]: A state dict that loads strictly into ``model``.
    """
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
        for key, value in dense_ffn_to_moe_state(
                ffn_state, moe.num_experts).items():
            state[prefix + key] = value
        state[f'{prefix}gate.weight'] = own_state[f'{prefix}gate.weight']
    return state
