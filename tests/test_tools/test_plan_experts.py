"""The dataset -> expert planner, on problems whose right answer is known, planning a
config from Python (plan_config_experts) and its CLI."""
import itertools
import json
import subprocess
import sys

import numpy as np
import pytest
from mmdet.registry import MODELS
from mmengine.config import Config
from mmengine.registry import init_default_scope

from damex_mmdet.analysis.expert_planner import (
    DEFAULT_CAPACITY_FACTOR, ExpertPlanError, dataset_token_features,
    dissimilarity_from_features, dissimilarity_from_routing, format_expert_plans,
    plan_config_experts, plan_experts, planned_config_text, sampling_shares)

from ..conftest import REPO_ROOT, TINY_CONFIG, load_script


def clustered_problem(seed, num_clusters=3, per_cluster=3, dims=8):
    """Datasets as points around cluster centres: (names, shares, D, cluster of each)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 5, (num_clusters, dims))
    clusters = np.repeat(np.arange(num_clusters), per_cluster)
    points = centres[clusters] + rng.normal(0, 0.3, (len(clusters), dims))
    names = [f'd{i}' for i in range(len(clusters))]
    shares = dict(zip(names, rng.uniform(0.5, 1.5, len(clusters))))
    dis = ((points[:, None] - points[None]) ** 2).sum(-1)
    return names, shares, dis, clusters


def within_expert_dissimilarity(dis, expert_of):
    """A neutral yardstick (not the planner's objective): the mean dissimilarity of the
    dataset pairs that share an expert."""
    pairs = [dis[i, j] for i, j in itertools.combinations(range(len(expert_of)), 2)
             if expert_of[i] == expert_of[j]]
    return np.mean(pairs) if pairs else 0.0


def test_one_domain_under_two_names_shares_an_expert():
    names = ['photo', 'photo_copy', 'sketch', 'aerial', 'scan']
    dis = np.ones((5, 5)) - np.eye(5)
    dis[0, 1] = dis[1, 0] = 0.0
    shares = dict(photo=0.2, photo_copy=0.2, sketch=0.2, aerial=0.2, scan=0.2)
    plan = plan_experts(shares, dis, num_experts=4, capacity_factor=2.0)
    expert = plan.dataset_to_expert
    assert expert['photo'] == expert['photo_copy']
    assert len({expert[n] for n in names[2:]} | {expert['photo']}) == 4
    assert plan.cost == pytest.approx(0.0)


@pytest.mark.parametrize('seed', range(5))
def test_recovers_the_domains_and_beats_random_maps(seed):
    names, shares, dis, clusters = clustered_problem(seed)
    plan = plan_experts(shares, dis, num_experts=3, capacity_factor=2.0)
    expert_of = np.array([plan.dataset_to_expert[n] for n in names])
    # The experts are exactly the three domains.
    for i, j in itertools.combinations(range(len(names)), 2):
        assert (expert_of[i] == expert_of[j]) == (clusters[i] == clusters[j])
    rng = np.random.default_rng(100 + seed)
    random_maps = [rng.integers(0, 3, len(names)) for _ in range(200)]
    random_cost = np.mean([within_expert_dissimilarity(dis, m) for m in random_maps])
    assert within_expert_dissimilarity(dis, expert_of) < 0.2 * random_cost
    assert plan.cost >= plan.lower_bound - 1e-6


def test_one_expert_plan_is_optimal_against_brute_force():
    rng = np.random.default_rng(7)
    points = rng.normal(size=(6, 3))
    dis = ((points[:, None] - points[None]) ** 2).sum(-1)
    shares = dict(zip('abcdef', rng.uniform(0.5, 1.5, 6)))
    weights = np.array(list(shares.values())) / sum(shares.values())
    capacity = 1.5 / 3
    plan = plan_experts(shares, dis, num_experts=3, capacity_factor=1.5)
    best = np.inf
    for medoids in itertools.combinations(range(6), 3):
        for assignment in itertools.product(range(3), repeat=6):
            if any(assignment[m] != k for k, m in enumerate(medoids)):
                continue
            loads = np.bincount(assignment, weights, minlength=3)
            if loads.max() > capacity + 1e-9:
                continue
            best = min(best, sum(dis[i, medoids[a]] for i, a in enumerate(assignment)))
    assert plan.cost == pytest.approx(best)


def test_capacity_is_respected_and_large_datasets_stand_alone():
    names, shares, dis, _ = clustered_problem(3, num_clusters=2, per_cluster=4)
    shares = dict.fromkeys(names, 1.0)
    shares['d0'] = 10.0  # share 10/17 = 0.59: two experts' capacity of 1.2/4 = 0.3
    plan = plan_experts(shares, dis, num_experts=4, capacity_factor=1.2)
    assert plan.oversized == {'d0': 2}
    experts = plan.dataset_to_expert
    assert [n for n in names if experts[n] == experts['d0']] == ['d0']
    loads = np.array(plan.expert_loads)
    others = np.delete(loads, experts['d0'])
    assert others.max() <= plan.capacity + 1e-9
    assert loads.sum() == pytest.approx(1.0)

    split = plan_experts(shares, dis, num_experts=4, capacity_factor=1.2, allow_split=True)
    # d0 spans at least the experts its share needs (here it shares them with the small
    # datasets of its domain, which the program may give experts of their own).
    assert len(split.dataset_to_experts['d0']) >= 2
    assert max(split.expert_loads) <= split.capacity + 1e-9
    assert split.cost >= split.lower_bound - 1e-6
    with pytest.raises(ExpertPlanError, match='span several experts'):
        split.dataset_to_expert


def test_deterministic_and_experts_numbered_by_first_dataset():
    names, shares, dis, _ = clustered_problem(1, num_clusters=4, per_cluster=2)
    plans = [plan_experts(shares, dis, num_experts=4) for _ in range(2)]
    assert plans[0] == plans[1]
    first_experts = [plans[0].dataset_to_expert[n] for n in names]
    seen = list(dict.fromkeys(first_experts))
    assert seen == sorted(seen) == list(range(4))


def test_fewer_datasets_than_experts_keeps_one_each_in_order():
    shares = sampling_shares(dict(photo=250, sketch=250, aerial=250, scan=40))
    dis = np.ones((4, 4)) - np.eye(4)
    plan = plan_experts(shares, dis, num_experts=4)
    assert plan.dataset_to_expert == dict(photo=0, sketch=1, aerial=2, scan=3)
    tempered = sampling_shares(dict(photo=250, scan=40),
                               dict(type='MixtureSampler', mode='temperature',
                                    temperature=2.0))
    assert tempered['scan'] == pytest.approx(40**0.5 / (40**0.5 + 250**0.5))


def test_planned_config_keeps_unused_experts_spare(tmp_path):
    """With more experts than datasets the planned config trains: the unused experts
    are written as spare, which DAMEX requires of an expert no dataset maps to."""
    init_default_scope('mmdet')
    shares = sampling_shares(dict(photo=250, sketch=250))
    plan = plan_experts(shares, np.ones((2, 2)) - np.eye(2), num_experts=4)
    out = tmp_path / 'planned.py'
    out.write_text(planned_config_text(str(TINY_CONFIG), plan, 4))
    model = MODELS.build(Config.fromfile(str(out)).model)
    assert model.dataset_to_expert == dict(photo=0, sketch=1)
    assert model.spare_experts == (2, 3)
    model.check_training_map(['photo', 'sketch'])


def test_infeasible_and_malformed_problems_fail_clearly():
    dis = np.ones((3, 3)) - np.eye(3)
    with pytest.raises(ExpertPlanError, match='capacity'):
        plan_experts(dict(a=1, b=1, c=1), dis, num_experts=2, capacity_factor=1.0)
    with pytest.raises(ExpertPlanError, match='symmetric'):
        plan_experts(dict(a=1, b=1, c=1), dis + np.triu(dis), num_experts=2)
    with pytest.raises(ExpertPlanError, match='3 datasets'):
        plan_experts(dict(a=1, b=1, c=1), dis[:2, :2], num_experts=2)


def test_routing_histograms_give_hellinger_distances():
    report = dict(datasets=['a', 'b', 'c'], protocols=dict(gate=dict(layers=dict(
        l0=dict(shares=dict(a=[1.0, 0.0], b=[1.0, 0.0], c=[0.0, 1.0]))))))
    dis = dissimilarity_from_routing(report)
    np.testing.assert_allclose(dis, [[0, 0, 1], [0, 0, 1], [1, 1, 0]])


def test_features_of_a_checkpoint_and_the_written_config(tiny_checkpoint, tmp_path):
    config, checkpoint = tiny_checkpoint
    stats = dataset_token_features(str(config), str(checkpoint),
                                   layers=dict(decoder=[0, 1]), progress=False)
    names = ['photo', 'sketch', 'aerial', 'scan']
    assert list(stats) == names
    assert stats['photo']['mean'].shape == (2, 256)
    # 4 val images x 10 queries each.
    assert stats['scan']['num_tokens'] == 40
    dis = dissimilarity_from_features(stats)
    assert dis.shape == (4, 4) and np.all(dis[~np.eye(4, dtype=bool)] > 0)

    out = tmp_path / 'planned.py'
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / 'tools' / 'plan_experts.py'), str(config),
         '--features-checkpoint', str(checkpoint), '--num-experts', '3',
         '--capacity-factor', '2', '--out', str(out)],
        capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(out.with_suffix('.json').read_text())
    planned = Config.fromfile(str(out))
    expert_map = summary['plan']['dataset_to_experts']
    assert planned.model.num_experts == 3
    assert planned.model.dataset_to_expert == {n: e[0] for n, e in expert_map.items()}
    [routing] = [e for e in planned.val_evaluator if e.type == 'RoutingMetric']
    # The metric scores against the model's map: no second copy to go stale.
    assert 'dataset_to_expert' not in routing
    assert len(set(planned.model.dataset_to_expert.values())) == 3
    assert planned.model.spare_experts == []


def routing_report(shares_by_dataset):
    return dict(datasets=list(shares_by_dataset), protocols=dict(gate=dict(layers=dict(
        l0=dict(shares=shares_by_dataset)))))


def test_plan_config_experts_from_a_routing_report(tmp_path):
    """The tool's work from Python: a vanilla MoE that sends photo and sketch to one
    expert and aerial and scan to another plans them onto shared experts."""
    routing = tmp_path / 'routing.json'
    routing.write_text(json.dumps(routing_report(dict(
        photo=[0.9, 0.1], sketch=[0.85, 0.15], aerial=[0.1, 0.9], scan=[0.2, 0.8]))))
    out = tmp_path / 'planned' / 'damex_planned.py'
    summary = plan_config_experts(str(TINY_CONFIG), str(out), routing_json=str(routing),
                                  num_experts=2, capacity_factor=1.5,
                                  sizes=dict(photo=10, sketch=10, aerial=10, scan=10))
    planned = Config.fromfile(str(out))
    expert_map = planned.model.dataset_to_expert
    assert expert_map['photo'] == expert_map['sketch'] != expert_map['aerial'] == expert_map[
        'scan']
    assert json.loads(out.with_suffix('.json').read_text()) == json.loads(
        json.dumps(summary))
    printed = format_expert_plans(summary)
    assert printed.splitlines()[1].startswith('photo') and 'one-expert plan: cost' in printed

    routing.write_text(json.dumps(routing_report(dict(photo=[1.0, 0.0], sketch=[0.0, 1.0]))))
    with pytest.raises(ExpertPlanError, match=r"no data for datasets \['aerial', 'scan'\]"):
        plan_config_experts(str(TINY_CONFIG), str(out), routing_json=str(routing),
                            sizes=dict(photo=10, sketch=10, aerial=10, scan=10))
    with pytest.raises(ExpertPlanError, match='one similarity source'):
        plan_config_experts(str(TINY_CONFIG), str(out))


def test_cli_default_capacity_is_the_planners():
    """The CLI writes its default out (it parses before importing the package)."""
    tool = load_script('tools/plan_experts.py')
    args = tool.parse_args(['config.py', '--out', 'out.py', '--routing-json', 'r.json'])
    assert args.capacity_factor == DEFAULT_CAPACITY_FACTOR
