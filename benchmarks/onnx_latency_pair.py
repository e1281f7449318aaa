"""Two classifiers or taggers side by side in onnxruntime: parameters and latency at batch 1 and 32
(a distilled student against its teacher, an ensemble against one of its members).

Both are exported (float32, verified against PyTorch) and run by ``deploy.load`` with the same
number of threads on the same real test texts (IMDB reviews or CoNLL-2003 sentences); each figure is
the median of ``--repeats`` calls after warm-up, the two models alternating call by call.

    python benchmarks/onnx_latency_pair.py --baseline imdb-bilstm --candidate imdb-bigru-distilled \\
        --data_dir ../shared/data/imdb
"""

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import datasets

import deploy
from deploy.export import export
from lightning_modules.task_io import as_pretrained_folder
from zoo.storage.hub import resolve
from zoo.storage.pretrained import load_pretrained


def inputs(predictor, data_dir: str, count: int) -> list:
    test = datasets.Dataset.from_parquet(str(Path(data_dir) / "test.parquet")).shuffle(seed=0).select(range(count))
    if predictor.task == "classification":
        return test["text"]
    return [" ".join(tokens) for tokens in test["tokens"]]


def call(predictor):
    return predictor.classify if predictor.task == "classification" else predictor.tag


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="a zoo entry, pretrained folder or .ckpt (e.g. a teacher)")
    parser.add_argument("--candidate", required=True, help="a zoo entry, pretrained folder or .ckpt (e.g. a student)")
    parser.add_argument("--data_dir", required=True, help="a folder with test.parquet (IMDB or CoNLL-2003)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    logging.getLogger("rnnzoo").setLevel(logging.ERROR)  # the truncation notice, once per call

    models = {}
    with tempfile.TemporaryDirectory() as tmp:
        for role in ("baseline", "candidate"):
            with as_pretrained_folder(getattr(args, role)) as (source, _):
                export(source, Path(tmp) / role)
                network = load_pretrained(resolve(source)).network
            parameters = sum(p.numel() for p in network.parameters())
            models[role] = (deploy.load(Path(tmp) / role, threads=args.threads), parameters)
        texts = inputs(models["baseline"][0], args.data_dir, 32)
        print(f"{args.threads} onnxruntime thread(s), median of {args.repeats} calls, real test texts")
        print(f"{'batch':>5} {'baseline ms':>12} {'candidate ms':>13} {'baseline / candidate':>21}")
        for batch in (1, 32):
            times = {role: [] for role in models}
            for predictor, _ in models.values():  # warm-up
                for _ in range(3):
                    call(predictor)(texts[:batch])
            for i in range(args.repeats):
                for role, (predictor, _) in models.items():
                    start = time.perf_counter()
                    call(predictor)(texts[(i * batch) % 32 :][:batch] or texts[:batch])
                    times[role].append(time.perf_counter() - start)
            baseline, candidate = (statistics.median(times[role]) * 1e3 for role in ("baseline", "candidate"))
            print(f"{batch:>5} {baseline:>12.2f} {candidate:>13.2f} {baseline / candidate:>20.2f}x")
    baseline_parameters, candidate_parameters = models["baseline"][1], models["candidate"][1]
    print(
        f"parameters: baseline {baseline_parameters:,}, candidate {candidate_parameters:,} "
        f"({candidate_parameters / baseline_parameters:.3f} of the baseline)"
    )


if __name__ == "__main__":
    main()
