from .finite_loss_hook import FiniteLossHook
from .mixture_check_hook import MixtureCheckHook
from .rng_state_hook import RNGStateHook

__all__ = ['FiniteLossHook', 'MixtureCheckHook', 'RNGStateHook']
