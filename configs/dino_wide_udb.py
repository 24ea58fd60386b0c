# The capacity-matched dense control of damex_udb.py at UODB scale: dense DINO
# whose FFN in decoder layers 0, 2 and 4 (damex_udb.py's MoE layers) is as wide
# as a shared expert plus one routed expert (2048 + 2048), so every token gets
# the same active FFN width and training FLOPs there. At demo scale this
# control beat the recommended DAMEX (docs/results.md); whether it does at UODB
# scale is unmeasured: run both with the same schedule and seeds.
_base_ = './dino_udb.py'

model = dict(type='LayerwiseDINO',
             ffn_channels=dict(decoder={0: 4096, 2: 4096, 4: 4096}))
