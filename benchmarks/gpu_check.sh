#!/usr/bin/env bash
# The GPU check, one command, at most about 8 minutes on one GPU:
#   1. the tests marked `cuda` (tests/test_cuda: MoEFFN on CUDA equal to CPU,
#      deterministic dispatch, a DAMEX training step and predict, float16 and
#      bfloat16 AmpOptimWrapper steps);
#   2. bench_moe_layer.py --device cuda: E=8, top-1/top-2, 2k, 10k and 100k
#      tokens, balanced and dataset-pure routing;
#   3. bench_detector.py --device cuda at the UODB size (configs/dino_udb.py
#      against configs/damex_udb.py, the recommended DAMEX with a shared
#      expert: ResNet-50, 800x1333, batch 2);
# then writes one markdown table of results and targets to OUTPUT.md (and
# stdout); logs go next to it.
#
# Usage: benchmarks/gpu_check.sh [OUTPUT.md]   (default work_dirs/gpu_check/gpu_check.md)
# Exit status: 0 when every test passes and every target is met; 1 otherwise,
# and at once, with one line, where there is no usable GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUTPUT=${1:-work_dirs/gpu_check/gpu_check.md}
LOGS=$(dirname "$OUTPUT")

# Refuse, rather than skip, without CUDA or without mmcv's CUDA kernels.
"$PY" - <<'EOF' || exit 1
import sys

import torch

if not torch.cuda.is_available():
    sys.exit(f'gpu_check: FAIL: CUDA is not available (torch '
             f'{torch.__version__}, CUDA build {torch.version.cuda}); run it '
             f'on a machine with an NVIDIA GPU and a CUDA build of torch')
from mmcv.ops import get_compiling_cuda_version

if get_compiling_cuda_version() == 'not available':
    sys.exit('gpu_check: FAIL: mmcv was built without CUDA ops, which '
             "DINO's deformable attention needs on a GPU; rebuild it: "
             'MMCV_WITH_OPS=1 FORCE_CUDA=1 pip install --no-build-isolation '
             '--no-binary mmcv --force-reinstall mmcv==2.1.0')
EOF

mkdir -p "$LOGS"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
# Each step's time limit keeps the whole check within about 8 minutes.
timeout 240 "$PY" -m pytest tests/test_cuda -m cuda -q -rfEs -p no:cacheprovider \
    --junitxml="$LOGS/cuda_tests.xml" > "$LOGS/cuda_tests.log" 2>&1
echo "cuda tests: exit $? (log: $LOGS/cuda_tests.log)"
timeout 90 "$PY" benchmarks/bench_moe_layer.py --device cuda --experts 8 \
    --tokens 2000 10000 100000 --rounds 10 > "$LOGS/bench_moe_layer.log" 2>&1
echo "bench_moe_layer: exit $? (log: $LOGS/bench_moe_layer.log)"
timeout 150 "$PY" benchmarks/bench_detector.py --device cuda --sizes uodb \
    --rounds 5 --json "$LOGS/bench_detector.json" > "$LOGS/bench_detector.log" 2>&1
echo "bench_detector: exit $? (log: $LOGS/bench_detector.log)"

"$PY" - "$LOGS" "$OUTPUT" <<'EOF'
"""One markdown table: check, measured, target, verdict."""
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

logs, output = Path(sys.argv[1]), Path(sys.argv[2])
rows = []


def row(check, measured, target, ok):
    rows.append((check, measured, target, 'PASS' if ok else 'FAIL'))


# 1. Tests: every cuda test must run and pass.
try:
    suite = ET.parse(logs / 'cuda_tests.xml').getroot()
    suite = suite if suite.tag == 'testsuite' else suite.find('testsuite')
    total, failed, errors, skipped = (int(suite.get(key, 0)) for key in (
        'tests', 'failures', 'errors', 'skipped'))
    passed = total - failed - errors - skipped
    row('tests marked `cuda`', f'{passed} passed, {failed + errors} failed, '
        f'{skipped} skipped', 'all pass', total > 0 and passed == total)
    for case in suite.iter('testcase'):
        if case.find('failure') is not None or case.find('error') is not None:
            row(f'`{case.get("name")}`', 'failed', 'pass', False)
except (OSError, ET.ParseError):
    row('tests marked `cuda`', 'no result (see cuda_tests.log)', 'all pass',
        False)

# 2. MoE layer: the f+b ratio (last column) of every top-1 row.
moe_rows = {}
text = (logs / 'bench_moe_layer.log').read_text() if (
    logs / 'bench_moe_layer.log').exists() else ''
header = next((line for line in text.splitlines()
               if line.split()[:2] == ['tokens', 'layer']), '')
if header.rstrip().endswith('f+b x'):
    for line in text.splitlines():
        fields = line.split()
        if len(fields) > 5 and fields[1] == 'moe' and fields[3] == '1':
            moe_rows[(int(fields[0]), fields[4])] = float(fields[-1])
if moe_rows:
    for (tokens, routing), ratio in sorted(moe_rows.items()):
        row(f'MoE layer fwd+bwd / dense, E=8 top-1, {tokens} tokens, '
            f'{routing}', f'{ratio:.2f}x', '<= 1.05x', ratio <= 1.05)
else:
    row('MoE layer benchmark', 'no result (see bench_moe_layer.log)',
        '<= 1.05x', False)

# 3. Detector at the UODB size.
try:
    detector = json.loads((logs / 'bench_detector.json').read_text())
    uodb = detector['sizes']['uodb']
    seconds, peaks = uodb['seconds'], uodb['peak_bytes']
    for kind, label, target in (
            ('train', 'training step', 'train'),
            ('inference', 'inference', 'inference')):
        ratio = uodb['ratios'][target]
        row(f'UODB DAMEX / DINO {label}',
            f'{ratio:.3f}x ({seconds[f"{kind}_damex"] * 1e3:.0f} / '
            f'{seconds[f"{kind}_dino"] * 1e3:.0f} ms)',
            f'<= {detector["targets"][target]}x',
            ratio <= detector['targets'][target])
    ratio = uodb['ratios']['memory']
    row('UODB DAMEX / DINO peak training memory',
        f'{ratio:.3f}x ({peaks["damex"] / 2**30:.2f} / '
        f'{peaks["dino"] / 2**30:.2f} GiB)',
        f'<= {detector["targets"]["memory"]}x',
        ratio <= detector['targets']['memory'])
except (OSError, KeyError, ValueError):
    row('UODB detector benchmark', 'no result (see bench_detector.log)',
        '<= 1.05x', False)

device = torch.cuda.get_device_name(0)
lines = [f'GPU check on {device}, torch {torch.__version__} '
         f'(CUDA {torch.version.cuda})', '',
         '| check | measured | target | verdict |',
         '| --- | --- | --- | --- |']
lines += [f'| {" | ".join(r)} |' for r in rows]
table = '\n'.join(lines) + '\n'
output.write_text(table)
print(table)
failures = sum(r[3] == 'FAIL' for r in rows)
print(f'gpu_check: {"FAIL" if failures else "PASS"}: {failures} of '
      f'{len(rows)} rows failed; table in {output}')
sys.exit(1 if failures else 0)
EOF
