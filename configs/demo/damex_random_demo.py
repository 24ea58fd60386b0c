# The control of the recommended DAMEX (damex_demo.py) whose routing targets
# ignore the dataset: the same model, loss and weight, but each image's tokens
# are trained towards an expert drawn at random for that image (fixed per
# image, uniform over the experts). What it shares with DAMEX is everything
# but dataset-aware routing. benchmarks/README.md#does-damex-win
_base_ = './damex_demo.py'

model = dict(routing_targets='random_per_image')
