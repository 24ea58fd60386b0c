from .finite_loss_hook import FiniteLossHook
from .mixture_check_hook import MixtureCheckHook

__all__ = ['FiniteLossHook', 'MixtureCheckHook']
