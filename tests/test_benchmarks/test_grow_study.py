"""The growth study script's bookkeeping (its training runs are the mixture
study's and tools/grow_checkpoint.py's, tested there)."""
import json

from ..conftest import load_script


def test_seeds_of_separate_invocations_merge_unless_parameters_differ(
        tmp_path):
    study = load_script('benchmarks/grow_study.py')
    path = tmp_path / 'results.json'
    parameters = dict(max_iters=500, grow_iters=150, num_train=None,
                      num_val=200, goals=study.GOALS)
    study.store_results(path, parameters, [dict(seed=1, grown=0.5)])
    seeds = study.store_results(path, parameters, [dict(seed=0, grown=0.4)])
    assert seeds == [dict(seed=0, grown=0.4), dict(seed=1, grown=0.5)]
    assert json.loads(path.read_text()) == dict(parameters, seeds=seeds)
    # Seeds grown for another number of iterations are not comparable.
    shorter = dict(parameters, grow_iters=100)
    assert study.store_results(path, shorter, [dict(seed=0, grown=0.3)]) == [
        dict(seed=0, grown=0.3)]
