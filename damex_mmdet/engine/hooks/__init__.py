from .expert_lr_mult_hook import ExpertLrMultHook
from .finite_loss_hook import FiniteLossHook
from .mixture_check_hook import MixtureCheckHook
from .rng_state_hook import RNGStateHook
from .strict_load_hook import StrictLoadHook

__all__ = [
    'ExpertLrMultHook', 'FiniteLossHook', 'MixtureCheckHook', 'RNGStateHook',
    'StrictLoadHook'
]
