"""onnxruntime (float32 and int8) against PyTorch eager on the same shipped models, side by side.

For each ``--source`` (default: the four shipped text entries), each thread count and each batch
size: the classifier over texts of 200 tokens, the tagger over sentences of 14 words (CRF decoding
included), the translator's decoder step (a batch of beams) and the language model over 35 tokens
(and one generation step at batch 1). Both runtimes get the same number of threads; the three run
in turns, in blocks of calls (``interleaved_medians``), and each figure is the median of its calls
over ``--seconds``.

    python benchmarks/onnx_vs_torch.py [--source imdb-bilstm ...] [--threads 1 2] [--batches 1 8 32 64]
    python benchmarks/onnx_vs_torch.py --kernels   # a bare LSTM/BiLSTM layer: the whole-sequence ceiling
"""

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import deploy
from deploy import signatures as names
from deploy.export import export, load_source
from lightning_modules.task_io import as_pretrained_folder
from zoo import RNNLanguageModel, Seq2Seq, SequenceClassifier, SequenceTagger

ENTRIES = ("imdb-bilstm", "conll-bilstm-crf", "multi30k-bahdanau", "ptb-lstm-small-tied")


def cases(network, exported: dict, batch: int):
    """(name, torch call, onnxruntime call per exported variant) for the network's task at ``batch``."""
    rng = np.random.default_rng(0)
    if isinstance(network, RNNLanguageModel):
        tokens = rng.integers(0, network.vocab_size, (batch, 35))
        state, torch_tokens = network.init_state(batch), torch.from_numpy(tokens)
        calls = {}
        for variant, predictor in exported.items():
            ort_state = predictor.zero_state(batch)
            calls[variant] = lambda p=predictor, s=ort_state: p.step(tokens, s)
        yield f"LM, {batch} x 35 tokens", lambda: network(torch_tokens, state), calls
        if batch == 1:  # a generation step
            one = tokens[:, :1]
            calls = {variant: lambda p=p: p.step(one, p.zero_state(1)) for variant, p in exported.items()}
            yield "LM step, batch 1", lambda: network(torch_tokens[:, :1], state), calls
    elif isinstance(network, SequenceClassifier):
        tokens = rng.integers(1, network.embedding.num_embeddings, (batch, 200))
        lengths = np.full(batch, 200)
        torch_inputs = (torch.from_numpy(tokens), torch.from_numpy(lengths))
        feed = dict(zip(names.CLASSIFIER_INPUTS, (tokens, lengths), strict=True))
        calls = {variant: lambda p=p: p.sessions["model.onnx"].run(None, feed) for variant, p in exported.items()}
        yield f"classify {batch} x 200 tokens", lambda: network(*torch_inputs), calls
    elif isinstance(network, SequenceTagger):
        words = list(next(iter(exported.values())).tokenizers["tokenizer"].get_vocab())
        sentences = [list(rng.choice(words, 14)) for _ in range(batch)]
        _, feed = next(iter(exported.values())).features(sentences)
        inputs = {k: torch.from_numpy(v) for k, v in feed.items()}
        mask = torch.ones(batch, 14, dtype=torch.bool)

        def torch_call():
            return network.decode(network(*(inputs.get(name) for name in names.tagger_inputs(characters=True))), mask)

        calls = {
            variant: lambda p=p: p.sessions["model.onnx"].run([names.TAGS], feed) for variant, p in exported.items()
        }
        yield f"tag {batch} x 14 words (CRF decoding)", torch_call, calls
    elif isinstance(network, Seq2Seq):
        words = list(next(iter(exported.values())).tokenizers["source_tokenizer"].get_vocab())
        texts = [" ".join(rng.choice(words, 12)) for _ in range(batch)]
        calls = {}
        for variant, predictor in exported.items():
            memory, state = predictor.encode_graph(*predictor.encode_sources(texts))
            tokens = np.full(batch, predictor.bos, dtype=np.int64)
            calls[variant] = lambda p=predictor, t=tokens, s=state, m=memory: p.step(t, s, m)
        source, lengths = next(iter(exported.values())).encode_sources(texts)
        torch_memory, torch_state = network.encode(torch.from_numpy(source), torch.from_numpy(lengths))
        torch_tokens = torch.from_numpy(tokens)
        yield (
            f"decoder step, batch {batch}",
            lambda: network.decode_step(torch_tokens, torch_state, torch_memory),
            calls,
        )
    else:
        raise SystemExit(f"no benchmark case for {type(network).__name__}")


def interleaved_medians(calls: dict[str, Callable], seconds: float, block: float = 0.2) -> dict[str, float]:
    """The median time of each call. The calls run in blocks of ``block`` seconds taking turns (A B C A
    B C ...), so that a slower or faster stretch of the machine falls on all of them alike; at least 5
    rounds and ``seconds`` in all. Between blocks the process sleeps and each block's first call is
    dropped: a runtime's idle worker threads keep spinning for milliseconds after its call (PyTorch's
    OpenMP and onnxruntime's pool both do), and taking turns call by call let them take the core
    from the next runtime (PyTorch's classifier at 32 x 200 tokens on 2 threads: 58 ms alone, 96 ms
    after each onnxruntime call)."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    start = time.perf_counter()
    rounds = 0
    while rounds < 5 or time.perf_counter() - start < seconds:
        for name, call in calls.items():
            time.sleep(0.05)  # the other runtime's spinning threads go to sleep
            call()  # dropped: wakes this runtime's threads
            began = time.perf_counter()
            while True:
                before = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - before)
                if before - began >= block:
                    break
        rounds += 1
    return {name: statistics.median(values) for name, values in times.items()}


def bare_kernels(threads: int, seconds: float) -> None:
    """A lone ``nn.LSTM`` (200 -> 256, 32 x 200 steps) in both runtimes: the whole-sequence ceiling.
    Both run the same GEMMs on optimised CPU BLAS, so a fused-graph runtime cannot be much faster."""
    import io

    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    inputs = torch.randn(32, 200, 200)
    print(f"\nbare nn.LSTM 200 -> 256, batch 32 x 200 steps, {threads} thread(s), medians of blocks taking turns")
    print("| layer | torch eager | onnxruntime | speed-up |")
    print("| --- | ---: | ---: | ---: |")
    for bidirectional in (False, True):
        lstm = torch.nn.LSTM(200, 256, batch_first=True, bidirectional=bidirectional).eval()
        graph = io.BytesIO()
        torch.onnx.export(lstm, (inputs,), graph, input_names=["x"], dynamo=False, opset_version=17)
        session = onnxruntime.InferenceSession(graph.getvalue(), options, providers=["CPUExecutionProvider"])
        with torch.inference_mode():
            t = interleaved_medians(
                {
                    "torch": lambda layer=lstm: layer(inputs),
                    "ort": lambda s=session: s.run(None, {"x": inputs.numpy()}),
                },
                seconds,
            )
        eager, ort = t["torch"], t["ort"]
        name = "BiLSTM" if bidirectional else "LSTM"
        print(f"| {name} | {eager * 1e3:,.1f} ms | {ort * 1e3:,.1f} ms | **{eager / ort:.2f}x** |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", nargs="+", default=list(ENTRIES), help="checkpoints, pretrained folders or entries")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--seconds", type=float, default=3.0, help="time per case and thread count, all variants")
    parser.add_argument("--kernels", action="store_true", help="time a bare nn.LSTM/BiLSTM layer instead")
    args = parser.parse_args()
    if args.kernels:
        for threads in args.threads:
            torch.set_num_threads(threads)
            bare_kernels(threads, args.seconds)
        return

    print("| case | threads | torch eager | onnxruntime fp32 | onnxruntime int8 | fp32 / torch | int8 / torch |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in args.source:
        with tempfile.TemporaryDirectory() as tmp, as_pretrained_folder(name) as (source, _):
            export(source, Path(tmp) / "fp32")
            export(source, Path(tmp) / "int8", quantize="int8")
            network = load_source(source)[0].network.eval()
            for threads in args.threads:
                torch.set_num_threads(threads)
                exported = {v: deploy.load(Path(tmp) / v, threads=threads) for v in ("fp32", "int8")}
                with torch.inference_mode():
                    for batch in args.batches:
                        for case, torch_call, ort_calls in cases(network, exported, batch):
                            t = interleaved_medians({"torch": torch_call, **ort_calls}, args.seconds)
                            print(
                                f"| {name}: {case} | {threads} | {ms(t['torch'])} | {ms(t['fp32'])} | {ms(t['int8'])} "
                                f"| **{t['torch'] / t['fp32']:.2f}x** | **{t['torch'] / t['int8']:.2f}x** |",
                                flush=True,
                            )


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.2f} ms" if seconds < 0.01 else f"{seconds * 1e3:,.1f} ms"


if __name__ == "__main__":
    main()
