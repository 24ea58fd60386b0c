# The dense control that gets DAMEX's dataset supervision without routing:
# dense DINO plus a linear probe (a gate's shape) on the FFN input of decoder
# layers 0 and 2, DAMEX's MoE layers, trained with DAMEX's routing
# cross-entropy towards each token's dataset at DAMEX's weight, and unused at
# test time. In DAMEX the routing loss's gradient reaches the tokens through
# the gate (the gate logits are not detached); here it does through the probe.
# benchmarks/README.md#does-damex-win
_base_ = './dino_demo.py'

model = dict(
    type='LayerwiseDINO',
    dataset_probe=dict(datasets=['photo', 'sketch', 'aerial', 'scan'],
                       layers=dict(decoder=[0, 2]), loss_weight=0.1))
