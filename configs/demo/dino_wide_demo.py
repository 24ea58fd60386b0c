# The capacity-matched dense control of the recommended DAMEX (damex_demo.py):
# dense DINO whose FFN in decoder layers 0 and 2, DAMEX's MoE layers, is as
# wide as a shared expert plus one routed expert (512 + 512), so every token
# gets the same active FFN width and FLOPs there; the other layers keep 512.
# benchmarks/README.md#does-damex-win
_base_ = './dino_demo.py'

model = dict(type='LayerwiseDINO', ffn_channels=dict(decoder={0: 1024, 2: 1024}))
