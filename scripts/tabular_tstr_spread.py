"""How much do the tabular demo's scores move with the sampling seed? A saved tabular model
(the demo's `model/` folder) is sampled with several seeds, and the per-class Gaussian baseline
is drawn with as many seeds; each sample set is scored by the demo's `TableEvaluator`
(TSTR, W1, detection AUC). The demo itself scores one sample set of each.

Examples:

    qgfd-hf demo --modality tabular --output-dir runs/tab
    python scripts/tabular_tstr_spread.py runs/tab/model --seeds 0 1 2 3
    python scripts/tabular_tstr_spread.py runs/tab/model --seeds 0 1 --sampler ddpm --num-inference-steps 100

Breast cancer only (the demo's data); one torch thread.
"""

from __future__ import annotations

import argparse
import statistics

KEYS = ("tstr", "w1", "detection_auc")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a saved tabular model folder trained on --dataset breast-cancer")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--sampler", default=None, help="default: the demo's (ddim)")
    parser.add_argument("--num-inference-steps", type=int, default=None, help="default: the demo's (50)")
    args = parser.parse_args(argv)

    import torch

    from qgfd_hf.tasks.base import get_task
    from qgfd_hf.tasks.tabular import TableEvaluator, fit_columns, gaussian_rows

    torch.set_num_threads(1)
    task = get_task("tabular")
    ns = argparse.Namespace(dataset=None, data_files=None, data_dir=None, label_column=None, categorical_columns=None,
                            no_progress=True, seed=0)
    settings = task.settings(ns, for_demo=True)
    if args.sampler is not None:
        settings["sampler"] = args.sampler
    if args.num_inference_steps is not None:
        settings["num_inference_steps"] = args.num_inference_steps
    data = task.load_data(ns, settings)
    train, label = data.train.to_pandas(), data.info["label_column"]
    columns = fit_columns(train, data.info["kinds"])
    evaluator = TableEvaluator(train, data.test.to_pandas(), columns, label, seed=0)
    print(f"TRTR {evaluator.tstr(train):.4f}; sampler {settings['sampler']}, {settings['num_inference_steps']} steps")
    runs = {"model": [], "Gaussian": []}
    for seed in args.seeds:
        ns.seed = seed
        for name, rows in (("model", task.generate(args.model, data, settings, ns)),
                           ("Gaussian", gaussian_rows(train, columns, label, len(train), seed=seed))):
            s = evaluator.score(rows)
            runs[name].append(s)
            print(f"seed {seed} {name:9s}" + "".join(f"  {k} {s[k]:.4f}" for k in KEYS), flush=True)
    print(f"\nover {len(args.seeds)} seeds (mean +- std):")
    for name, scores in runs.items():
        cells = []
        for k in KEYS:
            values = [s[k] for s in scores]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{k} {statistics.mean(values):.4f} +- {sd:.4f}")
        print(f"  {name:9s} " + "  ".join(cells))


if __name__ == "__main__":
    main()
