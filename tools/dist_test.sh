#!/usr/bin/env bash
# Distributed testing as with mmdet's tools/dist_test.sh; the same variables
# as tools/dist_train.sh.
#
# Usage: [NNODES=2 NODE_RANK=0 MASTER_ADDR=10.1.1.1 PORT=29500] \
#            tools/dist_test.sh CONFIG CHECKPOINT GPUS [tools/test.py options]
set -eu
CONFIG=$1
CHECKPOINT=$2
GPUS=$3
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
PYTHON=${PYTHON:-python}

exec "$PYTHON" -m torch.distributed.run --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR" \
    --master_port="$PORT" --nproc_per_node="$GPUS" \
    "$(dirname "$0")/test.py" "$CONFIG" "$CHECKPOINT" --launcher pytorch \
    "${@:4}"
