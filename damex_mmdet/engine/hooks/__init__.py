from .mixture_check_hook import MixtureCheckHook

__all__ = ['MixtureCheckHook']
