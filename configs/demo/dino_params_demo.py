# The parameter-matched dense control of the recommended DAMEX (damex_demo.py):
# dense DINO whose FFN in decoder layers 0 and 2 holds as many parameters as a
# shared expert plus four routed experts (5 x 512 hidden units); every token
# uses all of them, so it has 2.5 times DAMEX's active width there.
# benchmarks/README.md#does-damex-win
_base_ = './dino_demo.py'

model = dict(type='LayerwiseDINO', ffn_channels=dict(decoder={0: 2560, 2: 2560}))
