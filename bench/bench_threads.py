"""1 intra-op thread against N, per model: what the packaging ``threads`` stage measures.

    python bench/bench_threads.py                      # N = 2, typical batch 64
    python bench/bench_threads.py --cores 4 --batch 1

Three models on the digits data (64 numeric features): a logistic regression, a small MLP
(64) and a large one (512, 512, 512, untrained weights are enough for timing), converted with
edgeml. For each, :func:`edgeml.package.threads.choose_threads` runs with a profile of
``--cores`` cores and ``typical_batch = --batch``; the table shows its medians (ms per call,
1 thread and N threads, side by side, spinning off), the speed-up per round at the typical
batch and the choice. Numbers are this host's: on a shared or busy machine N threads often lose,
which is why N must win every round by 1.3x.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64, help="the profile's typical_batch")
    args = parser.parse_args()

    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from edgeml.convert import frame_to_feeds, to_onnx
    from edgeml.package.profiles import load_profile
    from edgeml.package.threads import choose_threads, host_cores

    digits = load_digits()
    cols = [f"px{i}" for i in range(64)]
    X = pd.DataFrame(digits.data.astype(float), columns=cols)
    y = digits.target.astype(str)
    base = load_profile("x86_64")
    profile = base.model_copy(update={
        "cores": args.cores,
        "threads": base.threads.model_copy(update={"typical_batch": args.batch}),
    })
    models = {
        "logistic regression": LogisticRegression(max_iter=200),
        "mlp (64)": MLPClassifier((64,), max_iter=30, random_state=0),
        "mlp (512, 512, 512)": MLPClassifier((512, 512, 512), max_iter=2, random_state=0),
    }
    print(f"host: {host_cores()} usable cores; profile: {args.cores} cores, typical batch {args.batch}")
    print(f"{'model':<22}{'batch':>7}{'1 thread ms':>13}{'N threads ms':>14}{'ratio':>8}   rounds / choice")
    for name, est in models.items():
        pipe = Pipeline([("pre", ColumnTransformer([("n", StandardScaler(), cols)])), ("m", est)])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            pipe.fit(X, y)
        model = to_onnx(pipe, [{"name": c, "kind": "numeric"} for c in cols], task="classification",
                        runtime=profile.runtime_limits).to_bytes()
        feeds = frame_to_feeds(X.iloc[:256], [(c, "tensor(float)") for c in cols])
        choice = choose_threads(model, feeds, profile)
        n = choice.candidates[-1] if choice.candidates else 1
        for batch, ms in choice.ms.items():
            one, many = ms[1], ms[n]
            print(f"{name:<22}{batch.removeprefix('batch '):>7}{one:>13.4f}{many:>14.4f}{one / many:>7.2f}x")
        rounds = ", ".join(f"{g:.2f}x" for g in choice.gains)
        print(f"{'':<22}{'':>7}{'':>13}{'':>14}{'':>8}   [{rounds}] -> {choice.intra_op} ({choice.reason})")


if __name__ == "__main__":
    main()
