#!/usr/bin/env bash
# Distributed training as with mmdet's tools/dist_train.sh: GPUS processes
# on this node; with NNODES > 1, run it on every node with its NODE_RANK and
# the first node's MASTER_ADDR and PORT. CPU-only machines train with gloo.
#
# Usage: [NNODES=2 NODE_RANK=0 MASTER_ADDR=10.1.1.1 PORT=29500] \
#            tools/dist_train.sh CONFIG GPUS [tools/train.py options]
set -eu
CONFIG=$1
GPUS=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
PYTHON=${PYTHON:-python}

exec "$PYTHON" -m torch.distributed.run --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR" \
    --master_port="$PORT" --nproc_per_node="$GPUS" \
    "$(dirname "$0")/train.py" "$CONFIG" --launcher pytorch "${@:3}"
