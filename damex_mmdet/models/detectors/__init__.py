from .damex import DAMEX

__all__ = ['DAMEX']
