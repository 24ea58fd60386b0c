"""The accuracy study: dense DINO vs vanilla MoE vs DAMEX on demo mixtures.

For every setting, model and seed it trains the demo config in its own
process (tools/train.py), reads the final validation metrics (per-dataset
AP/AP50 in each dataset's own label space, routing accuracy and expert load)
and prints a table of means and spreads over seeds. Runs that already
finished are reused, so an interrupted study continues where it stopped.

Settings (the paper's three, at demo scale):
- default: the 4-dataset demo mixture (disparate domains, divergent label
  sets, one limited-data set);
- limited: every dataset cut to 30 training images;
- domains: the three most different domains only (sketch, aerial, scan);
- labels: photo and sketch, which share class names but not label blocks.

And the gain as the mixture grows: size2 (photo, aerial), default (its four
datasets), size6 (+ thermal, comic) and size8 (+ microscopy, underwater), the
extra datasets being the generator's EXTRA_DEMO_DATASETS. The four-dataset
point is default's runs: a four-dataset size setting would train the same
data for as long with the same schedule. --max-iters is the
length of a four-dataset run: a size setting trains max_iters * n / 4
iterations, so each dataset gets as many as in default, with the LR decay
milestones moved in proportion (the warm-up keeps its length); MoE models get
one expert per dataset (at least the configs' four), and the parameter-matched
dense control as many hidden units as DAMEX's experts then hold. The reference
model's gain over every other model on the test split, against the number of
datasets, is printed as a table and drawn with --plot (by default
<work-dir>/gain_vs_datasets.png when size settings run).

Models: dino (dense), moe (vanilla MoE), damex (the recommended
configuration: the paper's DAMEX plus a shared expert), damex_paper (the
paper's DAMEX), and upcycled: dense DINO for
the first --dense-fractions of the iterations (one model upcycled<percent>
per fraction), upcycled exactly into the recommended DAMEX
(tools/upcycle_checkpoint.py: the shared expert is the dense FFN and the
routed experts' output layers start at zero, routing weight 1, so the
upcycled model computes what the dense one did), then DAMEX for the rest
with ``load_from``. Same total iterations; the learning-rate
schedule continues where the dense phase stopped; the optimizer state
(AdamW moments) starts afresh in the DAMEX phase, as with any ``load_from``.

Each model is trained with every sampler of --samplers (proportional: drawn
by dataset size; temp2: size^(1/2)) and reported with its best one (by mean
AP over the seeds), and every model is compared with dense DINO seed by seed:
per-seed differences (model minus dense, same seed), their mean and standard
deviation, and the 95% interval of the mean difference (Student's t).

Usage:
    python benchmarks/mixture_study.py [--settings default] [--seeds 0 1 2]
        [--models dino moe damex damex_paper upcycled]
        [--samplers proportional temp2]
        [--max-iters 500] [--dense-fractions 0.5] [--num-val 200]
        [--num-train N]   # smoke runs on smaller mixtures
        [--plot gain.png]   # the gain against the size settings' datasets
        [--tag NAME --cfg-options KEY=VALUE ...]   # a variant, e.g.
        # --tag weight1 --cfg-options model.routing_loss.loss_weight=1.0
Results: work_dirs/study/results.json and markdown tables on stdout.
"""
import argparse
import fcntl
import functools
import hashlib
import itertools
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from scipy import stats
from tqdm import tqdm

from damex_mmdet.demo import (DEMO_DATASETS, EXTRA_DEMO_DATASETS,
                               generate_demo_mixture)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = dict(dino='configs/demo/dino_demo.py', moe='configs/demo/moe_demo.py',
               damex='configs/demo/damex_demo.py',
               damex_paper='configs/demo/damex_paper_demo.py',
               # The controls of the recommended DAMEX (damex).
               dino_wide='configs/demo/dino_wide_demo.py',
               dino_params='configs/demo/dino_params_demo.py',
               moe_shared='configs/demo/moe_shared_demo.py',
               damex_random='configs/demo/damex_random_demo.py',
               dino_probe='configs/demo/dino_probe_demo.py',
               dino_wide_probe='configs/demo/dino_wide_probe_demo.py')
# Models with a dataset-to-expert map to restrict to a setting's datasets.
DAMEX_MODELS = ('damex', 'damex_paper', 'damex_random')
# Models with a dataset probe whose classes are a setting's datasets.
PROBE_MODELS = ('dino_probe', 'dino_wide_probe')
# Models whose test split is also scored with oracle routing (each image
# through its dataset's expert), the ceiling of the learned gate.
ORACLE_MODELS = ('damex', 'damex_paper')
# Trained in two phases: dense DINO, then DAMEX from the upcycled checkpoint.
UPCYCLED = 'upcycled'
MODELS = [*CONFIGS, UPCYCLED]
NAMES = [spec.name for spec in DEMO_DATASETS]
EXTRA_NAMES = [spec.name for spec in EXTRA_DEMO_DATASETS]
CLASSES = {spec.name: spec.classes
           for spec in (*DEMO_DATASETS, *EXTRA_DEMO_DATASETS)}
# A dataset's expert in every setting: the default four keep theirs of the
# four-dataset configs, the extra ones take the next.
EXPERT_OF = {name: index for index, name in enumerate(NAMES + EXTRA_NAMES)}
SETTINGS = dict(
    default=dict(datasets=NAMES, num_train=None),
    limited=dict(datasets=NAMES, num_train=30),
    domains=dict(datasets=['sketch', 'aerial', 'scan'], num_train=None),
    labels=dict(datasets=['photo', 'sketch'], num_train=None),
    # The gain as the mixture grows; scale_iters: see setting_iters.
    size2=dict(datasets=['photo', 'aerial'], num_train=None, scale_iters=True),
    size6=dict(datasets=[*NAMES, *EXTRA_NAMES[:2]], num_train=None,
               scale_iters=True),
    size8=dict(datasets=[*NAMES, *EXTRA_NAMES], num_train=None,
               scale_iters=True),
)
SIZE_SETTINGS = [name for name, setting in SETTINGS.items()
                 if setting.get('scale_iters')]
# The settings the gain against the number of datasets is read from.
GROWTH_SETTINGS = ['size2', 'default', 'size6', 'size8']
# Dense controls whose FFN in DAMEX's MoE layers holds as many hidden units as
# DAMEX's shared expert and routed experts together; widened with the experts.
PARAMETER_MATCHED = ('dino_params', )
# Run-name suffix -> the sampler's config, written into every run's config
# (the demo configs differ: damex_demo.py samples with temperature 2).
SAMPLERS = dict(
    proportional="dict(type='MixtureSampler', mode='proportional')",
    temp2="dict(type='MixtureSampler', mode='temperature', temperature=2.0)",
)
# 200 val images per dataset resolve differences of about 1 AP; the generator
# draws val and test images from their own streams, so the training sets stay
# the same. Val chooses (samplers, variants); test reports.
DEFAULT_NUM_VAL = 200
DEFAULT_NUM_TEST = 200


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--settings', nargs='+', default=['default'],
                        choices=sorted(SETTINGS))
    parser.add_argument('--models', nargs='+', default=list(CONFIGS),
                        choices=MODELS)
    parser.add_argument('--samplers', nargs='+', default=['proportional'],
                        choices=list(SAMPLERS),
                        help='train every model with each; the tables report '
                        'each model with its best')
    parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1])
    parser.add_argument('--max-iters', type=int, default=500,
                        help='iterations of a four-dataset run; the LR decay '
                        'moves with it (at 80%% of the run)')
    parser.add_argument('--dense-fractions', nargs='+', type=float,
                        default=[0.5],
                        help='shares of the iterations the upcycled model '
                        'trains dense; each is a model, upcycled<percent>')
    parser.add_argument('--num-train', type=int, default=None,
                        help='training images per dataset in every setting, '
                        'for smoke runs (default: the setting\'s own)')
    parser.add_argument('--num-val', type=int, default=DEFAULT_NUM_VAL,
                        help='validation images per dataset')
    parser.add_argument('--num-test', type=int, default=DEFAULT_NUM_TEST,
                        help='held-out test images per dataset')
    parser.add_argument('--report', action='store_true',
                        help='train nothing: print the tables of every run '
                        'stored in the results file')
    parser.add_argument('--reference', default='damex', choices=list(CONFIGS),
                        help='the model every other model is compared with, '
                        'seed by seed, on the test split')
    parser.add_argument('--plot', metavar='PATH', default=None,
                        help='draw the reference\'s test AP gain over every '
                        'other model against the number of datasets of the '
                        'size settings stored in the results file, as a PNG '
                        '(default when size settings run: '
                        '<work-dir>/gain_vs_datasets<_tag>.png)')
    parser.add_argument('--work-dir', default='work_dirs/study')
    parser.add_argument('--data-dir', default='data/study')
    parser.add_argument('--tag', default='',
                        help='name of a variant; its runs are kept apart')
    parser.add_argument('--cfg-options', nargs='+', default=[],
                        metavar='KEY=VALUE',
                        help='config overrides of the variant, passed to '
                        'tools/train.py')
    args = parser.parse_args(argv)
    if UPCYCLED in args.models:
        for fraction, setting in itertools.product(args.dense_fractions,
                                                   args.settings):
            iters = setting_iters(setting, args.max_iters)
            dense_iters = round(fraction * iters)
            if not 0 < dense_iters < iters:
                parser.error(
                    f'--dense-fractions {fraction} of {setting}\'s {iters} '
                    'iterations leaves no dense or no DAMEX phase')
        percents = [round(100 * f) for f in args.dense_fractions]
        if len(set(percents)) < len(percents):
            parser.error(f'--dense-fractions {args.dense_fractions} name the '
                         'same whole percentage twice')
        upcycled = [f'{UPCYCLED}{p}' for p in percents]
        index = args.models.index(UPCYCLED)
        args.models[index:index + 1] = upcycled
    return args


def setting_iters(setting: str, max_iters: int) -> int:
    """The iterations a setting trains: ``max_iters``, or for a size setting
    ``max_iters`` per four datasets, so that each dataset gets as many
    training iterations as in default."""
    if not SETTINGS[setting].get('scale_iters'):
        return max_iters
    return round(max_iters * len(SETTINGS[setting]['datasets']) / len(NAMES))


def schedule_length(setting: str, max_iters: int):
    """How many iterations the LR schedule of a setting's runs spans, None
    for the demo configs' own (a run as long as theirs)."""
    iters = setting_iters(setting, max_iters)
    if iters == model_config('dino').train_cfg.max_iters:
        return None
    return iters


def study_config(setting: str, data_root: Path, model: str, seed: int,
                 max_iters: int, sampler: str = 'proportional',
                 schedule_iters=None) -> str:
    """A config restricting the demo config to a setting's datasets; with
    ``schedule_iters``, its LR schedule stretched to that many iterations
    (:func:`scaled_schedule`)."""
    names = SETTINGS[setting]['datasets']

    def entries(split):
        return [dict(name=n, data_root=f'{data_root.resolve()}/{n}/',
                     ann_file=f'annotations/{split}.json',
                     img_prefix=f'images/{split}/') for n in names]
    # Each dataset keeps its expert (EXPERT_OF), so a mixture of more than
    # four has more experts; experts no dataset of the setting uses stay
    # spare.
    experts = {n: EXPERT_OF[n] for n in names}
    num_experts = max(len(NAMES), *(e + 1 for e in experts.values()))
    spare = [e for e in range(num_experts) if e not in experts.values()]
    lines = [
        f"_base_ = '{REPO / CONFIGS[model]}'",
        f'randomness = dict(seed={seed})',
        f'train_cfg = dict(max_iters={max_iters}, val_interval={max_iters})',
        f'default_hooks = dict(logger=dict(interval=100), '
        f'checkpoint=dict(interval={max_iters}))',
        f'model = dict(bbox_head=dict(num_classes='
        f'{sum(len(CLASSES[n]) for n in names)}))',
        f'train_dataloader = dict(dataset=dict(datasets={entries("train")}))',
        f'val_dataloader = dict(dataset=dict(datasets={entries("val")}))',
        f'test_dataloader = dict(dataset=dict(datasets={entries("test")}))',
    ]
    lines.append('train_dataloader.update(sampler=dict(_delete_=True, '
                 f'**{SAMPLERS[sampler]}))')
    if model in PROBE_MODELS:
        lines.append(f'model.update(dataset_probe=dict(datasets={names}))')
    if model_config(model).model.get('num_experts', num_experts) \
            != num_experts:
        lines.append(f'model.update(num_experts={num_experts})')
    if model in PARAMETER_MATCHED and num_experts != len(NAMES):
        lines.append('model.update(ffn_channels='
                     f'{parameter_matched_channels(model, num_experts)})')
    if schedule_iters is not None:
        lines.append('param_scheduler = '
                     f'{run_schedule(model, schedule_iters)}')
    if model in DAMEX_MODELS:
        lines.append(f'model.update(dataset_to_expert=dict(_delete_=True, '
                     f'**{experts}), spare_experts={spare})')
    return '\n'.join(lines) + '\n'


@functools.lru_cache(maxsize=None)
def model_config(model: str):
    """A model's demo config, resolved once."""
    from mmengine.config import Config
    return Config.fromfile(str(REPO / CONFIGS[model]))


def parameter_matched_channels(model: str, num_experts: int) -> dict:
    """The ``ffn_channels`` of a :data:`PARAMETER_MATCHED` control whose
    DAMEX has ``num_experts`` routed experts: each layer's width per expert
    in the configs (shared expert plus damex_demo.py's experts) times
    ``1 + num_experts``."""
    configured_experts = model_config('damex').model.num_experts
    return {part: {layer: width // (1 + configured_experts) * (1 + num_experts)
                   for layer, width in layers.items()}
            for part, layers in model_config(model).model.ffn_channels.items()}


def continued_schedule(schedulers, offset: int, length: int) -> list:
    """Iteration-based schedulers that continue ``schedulers`` from iteration
    ``offset`` for ``length`` iterations, counting from 0 again.

    Supports what the demo config uses: ``LinearLR`` (a warm-up cut at
    ``offset`` starts from the factor it had reached; a finished one that
    ends at factor 1 is dropped) and ``MultiStepLR`` (milestones already
    passed become a ``ConstantLR`` factor over the whole continuation).
    Raises SystemExit for anything else.
    """
    continued = []
    for scheduler in schedulers:
        scheduler = dict(scheduler)
        kind = scheduler.pop('type')
        if scheduler.pop('by_epoch', True):
            raise SystemExit(f'cannot continue the epoch-based {kind}: the '
                             'study needs iteration-based schedulers')
        begin = scheduler.pop('begin', 0)
        end = scheduler.pop('end', offset + length)
        if kind == 'LinearLR':
            start = scheduler.pop('start_factor', 1.0 / 3)
            stop = scheduler.pop('end_factor', 1.0)
            # mmengine's LinearLR reaches end_factor at iteration end - 1.
            if end - 1 <= offset:
                if stop != 1.0:
                    raise SystemExit('cannot continue a finished LinearLR '
                                     'whose end_factor is not 1')
                continue
            passed = max(0, offset - begin) / (end - 1 - begin)
            continued.append(dict(
                type='LinearLR', by_epoch=False,
                start_factor=start + (stop - start) * passed,
                end_factor=stop, begin=max(0, begin - offset),
                end=end - offset, **scheduler))
        elif kind == 'MultiStepLR':
            gamma = scheduler.pop('gamma', 0.1)
            milestones = [begin + m for m in scheduler.pop('milestones')
                          if begin + m < end]
            done = sum(m <= offset for m in milestones)
            if done:
                # ConstantLR restores the rate at iteration end - 1.
                continued.append(dict(type='ConstantLR', by_epoch=False,
                                      factor=gamma**done, begin=0,
                                      end=length + 1))
            ahead = [m - max(begin, offset) for m in milestones if m > offset]
            if ahead:
                continued.append(dict(
                    type='MultiStepLR', by_epoch=False, gamma=gamma,
                    milestones=ahead, begin=max(0, begin - offset),
                    end=end - offset, **scheduler))
        else:
            raise SystemExit(f'cannot continue a {kind} schedule')
    return continued


def base_schedule(model: str) -> list:
    """The param_scheduler of a model's demo config."""
    return [s.to_dict() for s in model_config(model).param_scheduler]


def scaled_schedule(schedulers, base_iters: int, iters: int) -> list:
    """``schedulers``, made for runs of ``base_iters`` iterations, for a run
    of ``iters``: a ``LinearLR`` warm-up keeps its length (it steadies the
    optimizer whatever the run's length); ``MultiStepLR``'s begin, end and
    milestones move in proportion. Raises SystemExit for anything else."""
    def scale(iteration):
        return round(iteration * iters / base_iters)
    scaled = []
    for scheduler in schedulers:
        scheduler = dict(scheduler)
        kind = scheduler['type']
        if scheduler.get('by_epoch', True):
            raise SystemExit(f'cannot scale the epoch-based {kind}: the '
                             'study needs iteration-based schedulers')
        if kind == 'MultiStepLR':
            scheduler['milestones'] = [scale(m)
                                       for m in scheduler['milestones']]
            for key in ('begin', 'end'):
                if key in scheduler:
                    scheduler[key] = scale(scheduler[key])
        elif kind != 'LinearLR':
            raise SystemExit(f'cannot scale a {kind} schedule')
        scaled.append(scheduler)
    return scaled


def run_schedule(model: str, schedule_iters=None) -> list:
    """A model's LR schedule for runs whose schedule spans
    ``schedule_iters`` iterations (None: its demo config's own)."""
    if schedule_iters is None:
        return base_schedule(model)
    return scaled_schedule(base_schedule(model),
                           model_config(model).train_cfg.max_iters,
                           schedule_iters)


def final_metrics(work_dir: Path):
    scalars = sorted(work_dir.glob('*/vis_data/scalars.json'))
    for path in reversed(scalars):
        for line in reversed(path.read_text().splitlines()):
            record = json.loads(line)
            if any(k.startswith('mixture/') for k in record):
                return record
    return None


def variant_suffix(tag: str) -> str:
    """What the run and result file names of the variant ``tag`` carry
    (nothing for the plain study)."""
    return f'_{tag}' if tag else ''


def run_name(model: str, sampler: str, seed: int, args) -> str:
    sampler_suffix = '' if sampler == 'proportional' else f'_{sampler}'
    return f'{model}{variant_suffix(args.tag)}{sampler_suffix}_seed{seed}'


def resolved_digest(text: str) -> str:
    """A digest of the config ``text`` with its ``_base_`` files resolved.

    A run's config names its base (``configs/demo/damex_demo.py``) instead of
    copying it, so its text alone cannot tell that the base has changed since
    the run; the resolved config can.
    """
    from mmengine.config import Config
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / 'run_config.py'
        path.write_text(text)
        resolved = Config.fromfile(str(path)).to_dict()
    canonical = json.dumps(resolved, sort_keys=True, default=repr)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def config_header(text: str, args, cfg_options) -> str:
    """The first line of a run's config: what its text cannot show (mixture
    sizes, ``cfg_options``, the resolved config's digest)."""
    return (f'# mixture_study.py: num_train={args.num_train} '
            f'num_val={args.num_val} num_test={args.num_test} '
            f'cfg_options={cfg_options} '
            f'resolved={resolved_digest(text)}\n')


def recipe_digest(setting: str, model: str, sampler: str, args) -> str:
    """What makes one model's runs comparable across seeds: its configs at
    seed 0, headers included (:func:`config_header`). Stored runs of
    another recipe are not merged with this one's."""
    data_root = Path(args.data_dir) / setting
    phases = ['dino', 'damex'] if model.startswith(UPCYCLED) else [model]
    texts = [config_header(study_config(
        setting, data_root, phase, 0, setting_iters(setting, args.max_iters),
        sampler, schedule_length(setting, args.max_iters)),
        args, args.cfg_options) for phase in phases]
    return hashlib.sha256(
        '\n'.join([model, *texts]).encode()).hexdigest()[:16]


def train(setting: str, name: str, text: str, args, progress, finished,
          cfg_options) -> Path:
    """Train the config ``text`` as run ``name`` unless it already finished.

    ``finished(work_dir)`` tells whether a run is complete. A finished run is
    reused only when its config, header included (:func:`config_header`), is
    the one this study would write now.
    """
    work_dir = Path(args.work_dir) / setting / name
    config = work_dir.parent / f'{name}.py'
    text = config_header(text, args, cfg_options) + text
    if finished(work_dir):
        if config.exists() and config.read_text() == text:
            return work_dir
        raise SystemExit(
            f'{work_dir} holds a finished run whose parameters differ from '
            f'this study\'s (compare {config}). Pass another --work-dir or '
            '--tag, or delete that run to retrain it.')
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(text)
    command = [sys.executable, str(REPO / 'tools' / 'train.py'), str(config),
               '--work-dir', str(work_dir)]
    if cfg_options:
        command += ['--cfg-options', *cfg_options]
    progress.write(f'training {setting}/{name} -> {work_dir}')
    with open(work_dir.parent / f'{name}.log', 'w') as out:
        subprocess.run(command, stdout=out, stderr=subprocess.STDOUT,
                       check=True)
    return work_dir


def run(setting, model, sampler, seed, args, progress):
    data_root = Path(args.data_dir) / setting
    name = run_name(model, sampler, seed, args)

    def finished(work_dir):
        return final_metrics(work_dir) is not None
    iters = setting_iters(setting, args.max_iters)
    schedule_iters = schedule_length(setting, args.max_iters)
    if not model.startswith(UPCYCLED):
        text = study_config(setting, data_root, model, seed, iters, sampler,
                            schedule_iters)
        return train(setting, name, text, args, progress, finished,
                     args.cfg_options)
    dense_iters = round(int(model[len(UPCYCLED):]) / 100 * iters)
    damex_iters = iters - dense_iters
    # The dense phase runs the demo schedule and stops early. The
    # val_interval past its end does not stop mmengine from validating once at
    # the last iteration (a minute of the run); it stays because stored runs
    # are reused by their config text. The variant's --cfg-options are DAMEX
    # options and apply to the DAMEX phase only.
    dense_text = study_config(setting, data_root, 'dino', seed, dense_iters,
                              sampler, schedule_iters) + (
        f'train_cfg.update(val_interval={iters + 1})\n')
    dense_name = name.replace(f'_seed{seed}', f'_dense_seed{seed}')
    dense_dir = train(
        setting, dense_name, dense_text, args, progress,
        lambda d: (d / f'iter_{dense_iters}.pth').is_file(), [])
    init = dense_dir.parent / f'{name}_init.pth'
    schedule = continued_schedule(run_schedule('dino', schedule_iters),
                                  dense_iters, damex_iters)
    damex_text = study_config(setting, data_root, 'damex', seed, damex_iters,
                              sampler) + (
        '# Routing weight 1: the upcycled model starts as the dense one.\n'
        'model.update(moe_cfg=dict(normalize_weights=True))\n'
        f"load_from = '{init.resolve()}'\n"
        f'param_scheduler = {schedule}\n')
    if not finished(Path(args.work_dir) / setting / name):
        upcycle_config = dense_dir.parent / f'{name}_upcycle.py'
        upcycle_config.write_text(damex_text)
        command = [sys.executable,
                   str(REPO / 'tools' / 'upcycle_checkpoint.py'),
                   str(upcycle_config),
                   str(dense_dir / f'iter_{dense_iters}.pth'), str(init),
                   '--force']
        if args.cfg_options:
            command += ['--cfg-options', *args.cfg_options]
        with open(dense_dir.parent / f'{name}_upcycle.log', 'w') as out:
            subprocess.run(command, stdout=out, stderr=subprocess.STDOUT,
                           check=True)
    return train(setting, name, damex_text, args, progress, finished,
                 args.cfg_options)


def test_metrics(work_dir: Path, cfg_options, oracle: bool = False) -> dict:
    """The metrics of a finished run's last checkpoint on the held-out test
    split (tools/test.py), with the learned gate or, with ``oracle``, each
    image routed through its dataset's expert. Computed once; kept in
    ``work_dir``."""
    kind = 'oracle' if oracle else 'test'
    stored = work_dir / f'{kind}_metrics.json'
    if stored.exists():
        return json.loads(stored.read_text())
    config = work_dir.parent / f'{work_dir.name}.py'
    checkpoint = (work_dir / 'last_checkpoint').read_text().strip()
    out_dir = work_dir / kind
    options = [*cfg_options, *(['model.test_routing=dataset'] if oracle
                               else [])]
    command = [sys.executable, str(REPO / 'tools' / 'test.py'), str(config),
               checkpoint, '--work-dir', str(out_dir)]
    if options:
        command += ['--cfg-options', *options]
    with open(work_dir / f'{kind}.log', 'w') as out:
        subprocess.run(command, stdout=out, stderr=subprocess.STDOUT,
                       check=True)
    # mmengine writes the test metrics to <timestamp>/<timestamp>.json.
    logs = sorted(p for p in out_dir.glob('*/*.json')
                  if p.stem == p.parent.name)
    metrics = json.loads(logs[-1].read_text())
    stored.write_text(json.dumps(metrics, indent=2))
    return metrics


def code_version() -> str:
    """The commit the study runs, and a digest of the uncommitted changes to
    the code and configs when there are any: what a stored result was made
    with, beside its config (``recipe``)."""
    def git(*command):
        return subprocess.run(['git', *command], cwd=REPO, check=True,
                              capture_output=True, text=True).stdout
    version = git('rev-parse', '--short=12', 'HEAD').strip()
    changes = git('diff', 'HEAD', '--', 'damex_mmdet', 'configs', 'tools',
                  'benchmarks')
    if changes:
        version += '+' + hashlib.sha256(changes.encode()).hexdigest()[:12]
    return version


def mean_std(values):
    """``mean±std`` (sample standard deviation; 0 for one value)."""
    std = np.std(values, ddof=1) if len(values) > 1 else 0.0
    return f'{np.mean(values):.3f}±{std:.3f}'


def interval_bounds(differences, confidence=0.95):
    """``(low, high)``: the ``confidence`` interval of the mean of paired
    ``differences`` (Student's t, n - 1 degrees of freedom); None for one
    seed."""
    if len(differences) < 2:
        return None
    half = (stats.t.ppf((1 + confidence) / 2, len(differences) - 1)
            * np.std(differences, ddof=1) / np.sqrt(len(differences)))
    mean = np.mean(differences)
    return mean - half, mean + half


def paired_interval(differences, confidence=0.95):
    """:func:`interval_bounds` as text: a gain of g is shown when the
    interval's lower end is at least g. ``n/a`` for one seed."""
    bounds = interval_bounds(differences, confidence)
    return 'n/a' if bounds is None else f'[{bounds[0]:+.3f}, {bounds[1]:+.3f}]'


def best_samplers(by_run):
    """Each model's sampler with the highest mean AP over its seeds."""
    best = {}
    for key, runs in by_run.items():
        model, sampler = key.split('/')
        score = np.mean([r['mixture/mean/AP'] for r in runs])
        if model not in best or score > best[model][1]:
            best[model] = (sampler, score)
    return {model: sampler for model, (sampler, _) in best.items()}


def dense_comparison(setting: str, by_run: dict) -> list:
    """Markdown lines: each model with its best sampler minus dense DINO with
    its best, same seed, on val."""
    names = SETTINGS[setting]['datasets']
    best = best_samplers(by_run)
    if 'dino' not in best or len(best) < 2:
        return []
    lines = []
    dense = {r['seed']: r for r in by_run[f'dino/{best["dino"]}']}
    lines += ['\nEach model with its best sampler minus dense DINO with '
              f'its best ({best["dino"]}), same seed:\n',
              '| model (sampler) | AP difference per seed | mean±std AP '
              '| 95% interval of the mean AP | mean±std AP50 | '
              + ' | '.join(f'{n} AP mean±std' for n in names) + ' |',
              '|---' * (len(names) + 5) + '|']
    for model, sampler in best.items():
        if model == 'dino':
            continue
        runs = [r for r in by_run[f'{model}/{sampler}']
                if r['seed'] in dense]

        def differences(metric):
            return [r[metric] - dense[r['seed']][metric] for r in runs]
        per_seed = ' / '.join(
            f'{d:+.3f} (seed {r["seed"]})'
            for d, r in zip(differences('mixture/mean/AP'), runs))
        lines.append(
            f'| {model} ({sampler}) | {per_seed} | '
            f'{mean_std(differences("mixture/mean/AP"))} | '
            f'{paired_interval(differences("mixture/mean/AP"))} | '
            f'{mean_std(differences("mixture/mean/AP50"))} | '
            + ' | '.join(mean_std(differences(f'mixture/{n}/AP'))
                         for n in names) + ' |')
    return lines


def metric_header(names) -> str:
    """The header cells every per-model table shares, in one order."""
    return 'mean AP | mean AP50 | ' + ' | '.join(f'{n} AP' for n in names)


def metric_cells(stat, names) -> str:
    """The cells of :func:`metric_header`, each ``stat(metric)``."""
    return ' | '.join(stat(metric) for metric in (
        'mixture/mean/AP', 'mixture/mean/AP50',
        *(f'mixture/{n}/AP' for n in names)))


def test_comparison(setting: str, by_run: dict, reference: str) -> list:
    """Markdown lines: on the held-out test split, each model with the
    sampler chosen on val (:func:`best_samplers`), mean±std over its seeds;
    then ``reference`` minus every other model, same seed, and the reference
    with oracle routing minus itself with its learned gate. Runs without
    test metrics are left out."""
    best = best_samplers(by_run)
    if reference not in best:
        return []
    names = SETTINGS[setting]['datasets']
    ours = {r['seed']: r for r in by_run[f'{reference}/{best[reference]}']
            if 'test' in r}
    lines = [f'\nTest split ({setting}; samplers chosen on val), each model '
             'over its seeds:\n',
             f'| model (sampler) | seeds | {metric_header(names)} |',
             '|---' * (len(names) + 4) + '|']

    def means(label, tested):
        def stat(metric):
            return mean_std([t[metric] for t in tested])
        return f'| {label} | {len(tested)} | {metric_cells(stat, names)} |'
    for model, sampler in best.items():
        tested = [r['test'] for r in by_run[f'{model}/{sampler}']
                  if 'test' in r]
        if tested:
            lines.append(means(f'{model} ({sampler})', tested))
    oracle_tested = [r['oracle'] for r in ours.values() if 'oracle' in r]
    if oracle_tested:
        lines.append(means(f'{reference} ({best[reference]}) with oracle '
                           'routing', oracle_tested))
    lines += [f'\n{reference} ({best[reference]}) minus each model, same '
              'seed:\n',
             '| minus | AP difference per seed | mean±std AP | 95% interval '
             '| mean±std AP50 | '
             + ' | '.join(f'{n} AP mean±std' for n in names) + ' |',
             '|---' * (len(names) + 5) + '|']

    def row(label, pairs):
        def differences(metric):
            return [a[metric] - b[metric] for a, b, _ in pairs]
        per_seed = ' / '.join(f'{d:+.3f} (seed {seed})' for d, (_, _, seed)
                              in zip(differences('mixture/mean/AP'), pairs))
        return (f'| {label} | {per_seed} | '
                f'{mean_std(differences("mixture/mean/AP"))} | '
                f'{paired_interval(differences("mixture/mean/AP"))} | '
                f'{mean_std(differences("mixture/mean/AP50"))} | '
                + ' | '.join(mean_std(differences(f'mixture/{n}/AP'))
                             for n in names) + ' |')
    for model, sampler in best.items():
        if model == reference:
            continue
        pairs = [(ours[r['seed']]['test'], r['test'], r['seed'])
                 for r in by_run[f'{model}/{sampler}']
                 if 'test' in r and r['seed'] in ours]
        if pairs:
            lines.append(row(f'{model} ({sampler})', pairs))
    oracle = [(r['oracle'], r['test'], seed) for seed, r in ours.items()
              if 'oracle' in r]
    if oracle:
        lines.append(row(f'(oracle routing minus {reference}\'s gate)',
                         oracle))
    return lines


def summarise(results, reference='damex'):
    """Markdown tables per setting: every model and sampler (mean ± std over
    seeds, on val), then each model with its best sampler against dense DINO
    with its best, seed by seed (val), then :func:`test_comparison`."""
    lines = []
    for setting, by_run in results.items():
        names = SETTINGS[setting]['datasets']
        lines += [f'\n### {setting}: {", ".join(names)}\n',
                  f'| model | sampler | seeds | {metric_header(names)} '
                  '| routing acc | max expert load |',
                  '|---' * (len(names) + 7) + '|']
        for key, runs in by_run.items():
            def stat(metric):
                values = [r[metric] for r in runs if metric in r]
                return mean_std(values) if values else 'n/a'
            loads = [max(v for k, v in r.items() if k.startswith(
                'routing/expert') and k.endswith('/load')) for r in runs
                if any(k.startswith('routing/expert') for k in r)]
            load = f'{np.mean(loads):.2f}' if loads else 'n/a'
            model, sampler = key.split('/')
            lines.append(
                f'| {model} | {sampler} | {len(runs)} | '
                f'{metric_cells(stat, names)} | '
                f'{stat("routing/mean/acc")} | {load} |')
        lines += dense_comparison(setting, by_run)
        lines += test_comparison(setting, by_run, reference)
    lines += growth_table(growth(results, reference), reference)
    return '\n'.join(lines)


def growth(results, reference):
    """``{model: {number of datasets: per-seed differences}}``: on the test
    split, ``reference`` minus each other model, same seed, in every setting
    of ``GROWTH_SETTINGS`` in ``results``; each model with the sampler chosen
    on val (:func:`best_samplers`)."""
    def test_ap(runs):
        return {r['seed']: r['test']['mixture/mean/AP'] for r in runs
                if 'test' in r}
    gains = {}
    for setting in GROWTH_SETTINGS:
        by_run = {key: runs for key, runs in results.get(setting, {}).items()
                  if runs}
        best = best_samplers(by_run)
        if reference not in best:
            continue
        ours = test_ap(by_run[f'{reference}/{best[reference]}'])
        for model, sampler in best.items():
            differences = [ours[seed] - ap for seed, ap in
                           test_ap(by_run[f'{model}/{sampler}']).items()
                           if seed in ours]
            if model != reference and differences:
                size = len(SETTINGS[setting]['datasets'])
                gains.setdefault(model, {})[size] = differences
    return gains


def growth_table(gains, reference) -> list:
    """Markdown lines: :func:`growth` as mean [95% interval] (seeds)."""
    sizes = sorted({size for by_size in gains.values() for size in by_size})
    if not sizes:
        return []
    lines = [f'\nThe gain as the mixture grows: test AP of {reference} minus '
             'each model, same seed, mean [95% interval] (seeds):\n',
             '| minus | ' + ' | '.join(f'{n} datasets' for n in sizes) + ' |',
             '|---' * (len(sizes) + 1) + '|']
    for model, by_size in gains.items():
        cells = [f'{np.mean(by_size[n]):+.3f} '
                 f'{paired_interval(by_size[n])} ({len(by_size[n])})'
                 if n in by_size else '' for n in sizes]
        lines.append(f'| {model} | ' + ' | '.join(cells) + ' |')
    return lines


def plot_growth(gains, reference, path):
    """Draw :func:`growth` to the PNG ``path``: one line per model, the mean
    difference with its 95% interval (none for one seed) against the number
    of datasets. Returns the figure."""
    from matplotlib.figure import Figure
    figure = Figure(figsize=(6.4, 4.2))
    axes = figure.subplots()
    axes.axhline(0.0, color='grey', linewidth=0.8)
    for index, (model, by_size) in enumerate(gains.items()):
        sizes = sorted(by_size)
        means = np.array([np.mean(by_size[n]) for n in sizes])
        bounds = [interval_bounds(by_size[n]) or (mean, mean)
                  for n, mean in zip(sizes, means)]
        errors = np.abs(np.array(bounds).T - means)
        # Side by side, so that the intervals of one size do not overlap.
        shift = 0.06 * (index - (len(gains) - 1) / 2)
        axes.errorbar(np.array(sizes) + shift, means, yerr=errors, marker='o',
                      capsize=3, label=f'{reference} minus {model}')
    axes.set_xticks(sorted({n for by_size in gains.values() for n in by_size}))
    axes.set_xlabel('datasets in the mixture')
    axes.set_ylabel('test AP difference (mean, 95% interval)')
    axes.set_title(f'The gain of {reference} as the mixture grows')
    axes.legend(fontsize='small')
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return figure


def merge_seeds(stored_runs, runs):
    """``stored_runs`` with ``runs`` merged in by seed, sorted by seed; a
    seed run again replaces its stored entry."""
    new_seeds = {r['seed'] for r in runs}
    kept = [r for r in stored_runs if r['seed'] not in new_seeds]
    return sorted(kept + runs, key=lambda r: r['seed'])


def update_json(path, update):
    """Replace the JSON file at ``path`` by ``update(its content or {})``.

    The lock and the atomic rename let several study processes, e.g. one
    per model or seed, share one results file; returns what was written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + '.lock'), 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stored = update(json.loads(path.read_text()) if path.exists() else {})
        partial = path.with_name(path.name + '.partial')
        partial.write_text(json.dumps(stored, indent=2))
        partial.replace(path)
    return stored


def store_results(path, results):
    """Merge ``results`` into the JSON file at ``path``, one run at a time:
    runs of earlier or concurrent invocations (other settings, models,
    samplers or seeds) stay in the file unless their ``recipe``
    (:func:`recipe_digest`) differs from the new runs' of that model and
    sampler, whose seeds they would otherwise be reported beside."""
    def merge(stored):
        for setting, by_run in results.items():
            stored_runs = stored.setdefault(setting, {})
            for key, runs in by_run.items():
                recipes = {r.get('recipe') for r in runs}
                kept = [r for r in stored_runs.get(key, [])
                        if r.get('recipe') in recipes]
                stored_runs[key] = merge_seeds(kept, runs)
        return stored
    return update_json(path, merge)


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.work_dir) / f'results{variant_suffix(args.tag)}.json'
    if args.report:
        stored = json.loads(out.read_text())
        print(summarise(stored, args.reference))
        draw_growth(stored, args)
        return
    # Seed-major order: an interrupted study has every model at the first
    # seed before any model at the second.
    jobs = [(s, m, sampler, seed) for s in args.settings for seed in args.seeds
            for sampler in args.samplers for m in args.models]
    for setting in args.settings:
        num_train = args.num_train or SETTINGS[setting]['num_train']
        generate_demo_mixture(Path(args.data_dir) / setting,
                              num_train=num_train, num_val=args.num_val,
                              num_test=args.num_test,
                              datasets=SETTINGS[setting]['datasets'])
    results = {s: {f'{m}/{sampler}': [] for m in args.models
                   for sampler in args.samplers} for s in args.settings}
    # One per model and sampler, not per seed: each resolves its configs.
    recipes = {(s, key): recipe_digest(s, *key.split('/'), args)
               for s, by_run in results.items() for key in by_run}
    with tqdm(jobs, desc='study runs', unit='run') as progress:
        for setting, model, sampler, seed in progress:
            # The code each run trains with: the tree may change between
            # runs of a long study.
            code = code_version()
            work_dir = run(setting, model, sampler, seed, args, progress)
            key = f'{model}/{sampler}'
            record = dict(
                final_metrics(work_dir), seed=seed,
                recipe=recipes[setting, key], code=code,
                test=test_metrics(work_dir, args.cfg_options))
            if model in ORACLE_MODELS:
                record['oracle'] = test_metrics(work_dir, args.cfg_options,
                                                oracle=True)
            results[setting][key].append(record)
            # Each run is stored as it finishes: a study stopped midway
            # keeps every run it completed.
            store_results(out, {setting: {key: [record]}})
    iterations = ', '.join(f'{setting_iters(s, args.max_iters)} ({s})'
                           for s in args.settings)
    print(f'\nResults ({len(args.seeds)} seeds, {iterations} iterations, '
          f'{args.num_val} val and {args.num_test} test images per dataset, '
          f'mean±std over seeds): {out}')
    print(summarise(results, args.reference))
    draw_growth(json.loads(out.read_text()), args)


def draw_growth(stored, args):
    """--plot: :func:`plot_growth` of the settings of ``GROWTH_SETTINGS`` in
    the results file ``stored``, for the models measured at two sizes or
    more; by default when this invocation trained size settings. Returns
    the figure, None when nothing was drawn."""
    path = args.plot
    if path is None and not args.report and set(args.settings) & set(
            SIZE_SETTINGS):
        path = (Path(args.work_dir)
                / f'gain_vs_datasets{variant_suffix(args.tag)}.png')
    if path is None:
        return None
    gains = growth(stored, args.reference)
    if not gains:
        print(f'\nNo plot: no setting of the series '
              f'({", ".join(GROWTH_SETTINGS)}) has '
              f'test results of {args.reference} and another model.')
        return None
    # A model measured at one size draws no line; the table keeps it.
    figure = plot_growth({model: by_size for model, by_size in gains.items()
                          if len(by_size) > 1} or gains, args.reference, path)
    print(f'\nThe gain against the number of datasets: {path}')
    return figure


if __name__ == '__main__':
    main()
