"""Which shared-prefix credit rule gives turns the advantage they deserve? (run: python
benchmarks/credit_bench.py [--steps 12] [--seeds 0 1 2])

The simulator knows every prefix's true value V(H_t), so a turn's true advantage is
V(H_t) - V(H_{t-1}): how much the action taken at turn t changed the chance of success. TRACE's
trees (grown with the oracle predictor, so the tree shapes are TRACE's best case, and with the
learned one) are turned into training samples with `shared="once"` (a shared turn trained with
the advantage of the rollout that generated it), `"average"` (with the mean advantage of all
leaves below it) and `"per_path"` (once per leaf below it, each with its own advantage), and each
trained turn's advantage is compared with its true advantage: Pearson correlation (weighted by how
many times the turn is trained) and sign agreement. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trace_agents.train.advantages import training_samples  # noqa: E402
from trace_allocation.experiments import allocators  # noqa: E402
from trace_allocation.simulate import Scenario, simulate  # noqa: E402

MODES = ("once", "average", "per_path")


def collect(sc: Scenario, method: str) -> dict[str, list[tuple[float, float]]]:
    """(assigned, true) advantage of every trained turn of every step's trees, per mode."""
    make = allocators(sc)[method]
    pairs: dict[str, list[tuple[float, float]]] = {m: [] for m in MODES}

    def spy(world, rng):
        allocator = make(world, rng)
        original = allocator.training_trees

        def training_trees(trees):
            for mode in MODES:
                for sample in training_samples(trees, shared=mode):
                    for depth, advantage in sample.advantages.items():
                        node, parent = sample.path[depth], sample.path[depth - 1]
                        true = world.truth[node.prefix_text] - world.truth[parent.prefix_text]
                        pairs[mode].append((advantage, true))
            return original(trees)

        allocator.training_trees = training_trees
        return allocator

    simulate(sc, spy, name=method)
    return pairs


def score(pairs: list[tuple[float, float]]) -> dict[str, float]:
    assigned, true = np.array(pairs).T
    trained = assigned != 0
    return {
        "trained_turns": int(trained.sum()),
        "correlation": float(np.corrcoef(assigned[trained], true[trained])[0, 1]),
        "sign_agreement": float(np.mean(np.sign(assigned[trained]) == np.sign(true[trained]))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=["trace", "trace_oracle"])
    args = parser.parse_args()
    report: dict = {}
    for method in args.methods:
        per_seed = [collect(Scenario(seed=s, steps=args.steps, warmup=0), method) for s in args.seeds]
        report[method] = {
            mode: {
                key: float(np.mean([score(p[mode])[key] for p in per_seed]))
                for key in ("trained_turns", "correlation", "sign_agreement")
            }
            | {"correlation_by_seed": [round(score(p[mode])["correlation"], 4) for p in per_seed]}
            for mode in MODES
        }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
