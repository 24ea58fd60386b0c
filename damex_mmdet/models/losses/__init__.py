from .routing import DAMEXLoss, LoadBalancingLoss

__all__ = ['DAMEXLoss', 'LoadBalancingLoss']
