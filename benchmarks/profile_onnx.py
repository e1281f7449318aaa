"""Where an exported model's onnxruntime time goes, by operator type (onnxruntime's own profiler).

Exports ``--source`` (a zoo entry, checkpoint or pretrained folder) in float32, or int8 with
``--quantize int8``, runs the cases of ``benchmarks/onnx_vs_torch.py`` for its task (``--calls``
times each, after warm-up) with ``SessionOptions.enable_profiling``, and prints, per case, each
operator type's share of the time spent in graph nodes and the share of the whole ``run`` that no
node accounts for (feeding and fetching tensors, the executor).

    python benchmarks/profile_onnx.py --source imdb-bilstm [--threads 1] [--calls 50] [--quantize int8]
"""

import argparse
import json
import tempfile
from collections import defaultdict
from pathlib import Path

import onnxruntime as ort
import torch
from onnx_vs_torch import cases  # this folder is on the path when a benchmark runs as a script

import deploy
from deploy.export import export, load_source
from deploy.runtime import session_options
from lightning_modules.task_io import as_pretrained_folder

WARMUP = 5  # calls left out of each trace's figures


def profiled(predictor, threads: int, prefix: Path):
    """The predictor with profiling sessions on the same graphs and options (``deploy.runtime.session_options``)."""
    for name in list(predictor.sessions):
        options = session_options(threads)
        options.enable_profiling = True
        options.profile_file_prefix = str(prefix / name)
        path = str(predictor.folder / name)
        predictor.sessions[name] = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return predictor


def summarize(trace: list[dict], by_op: dict[str, float]) -> float:
    """Add one session's node time (µs) after its first WARMUP runs to ``by_op``; its run time (µs)."""
    runs = sorted((e for e in trace if e.get("cat") == "Session" and e["name"] == "model_run"), key=lambda e: e["ts"])
    if len(runs) <= WARMUP:
        return 0.0
    start = runs[WARMUP - 1]["ts"] + runs[WARMUP - 1]["dur"]
    for event in trace:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= start:
            by_op[event["args"]["op_name"]] += event["dur"]
    return sum(run["dur"] for run in runs[WARMUP:])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", required=True, help="a zoo entry, .ckpt or pretrained folder")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--quantize", choices=["int8"], help="profile the int8 export instead of float32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp, as_pretrained_folder(args.source) as (source, _):
        folder = Path(tmp) / "exported"
        export(source, folder, quantize=args.quantize)
        network = load_source(source)[0].network.eval()
        every_case = [
            (batch, index)
            for batch in args.batches
            for index in range(len(list(cases(network, {"fp32": deploy.load(folder, threads=1)}, batch))))
        ]
        for batch, index in every_case:  # a predictor of its own per case: each trace holds one case's calls
            predictor = deploy.load(folder, threads=args.threads)
            case, _, calls = list(cases(network, {"fp32": predictor}, batch))[index]
            profiled(predictor, args.threads, Path(tmp))  # the calls read predictor.sessions when they run
            for _ in range(WARMUP + args.calls):
                calls["fp32"]()
            by_op, in_runs = defaultdict(float), 0.0
            for session in predictor.sessions.values():
                in_runs += summarize(json.loads(Path(session.end_profiling()).read_text()), by_op)
            in_nodes = sum(by_op.values())
            print(f"\n{case}: {in_runs / args.calls / 1e3:,.2f} ms per call in onnxruntime ({args.threads} thread(s))")
            print("| operator | share of node time | ms per call |")
            print("| --- | ---: | ---: |")
            for op, micros in sorted(by_op.items(), key=lambda item: -item[1]):
                print(f"| {op} | {micros / in_nodes:.1%} | {micros / args.calls / 1e3:,.3f} |")
            outside = max(in_runs - in_nodes, 0.0)
            print(f"| (no node: feeds, fetches, executor) | {outside / in_runs:.1%} of the run | "
                  f"{outside / args.calls / 1e3:,.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
