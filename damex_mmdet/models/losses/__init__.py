from .routing import DAMEXLoss, LoadBalancingLoss, LoadImportanceLoss

__all__ = ['DAMEXLoss', 'LoadBalancingLoss', 'LoadImportanceLoss']
