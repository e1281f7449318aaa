"""onnxruntime vs PyTorch eager on the same model, and int8 vs float32 onnxruntime, side by side.

Language model (default: a 2x200 LSTM over a 10k vocabulary, Zaremba small; or ``--source`` a
checkpoint/pretrained LM): one decode step at batch 1 (state carried) and a whole 35-step sequence
at batch 32. Classifier: 1 and 32 texts of 200 tokens. Tagger: 1 and 32 sentences of 14 words
(CRF decoding included). Translator: one decoder step at batch 1 and 64. Both
runtimes get the same number of threads; each figure is the median of ``--repeats`` timed calls
after warm-up.

    python benchmarks/onnx_vs_torch.py [--source X.ckpt|DIR] [--threads 1]
    python benchmarks/onnx_vs_torch.py --kernels   # a bare LSTM/BiLSTM layer: the whole-sequence ceiling
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import deploy
from deploy import signatures as names
from deploy.export import export, load_source
from lightning_modules.task_io import as_pretrained_folder
from zoo import RNNLanguageModel, Seq2Seq, SequenceClassifier, SequenceTagger
from zoo.pretrained import save_pretrained


def median_seconds(run, repeats: int) -> float:
    for _ in range(max(3, repeats // 10)):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def default_language_model(folder: Path) -> Path:
    torch.manual_seed(0)
    arguments = {"vocab_size": 10_000, "embedding_dim": 200, "hidden_size": 200, "num_layers": 2, "cell": "lstm"}
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    tokenizer = Tokenizer(WordLevel({"<unk>": 0, "<eos>": 1}, unk_token="<unk>")).to_str()
    return save_pretrained(
        folder,
        RNNLanguageModel(**arguments),
        arguments=arguments,
        task_arguments={},
        tokenizers={"tokenizer": tokenizer},
    )


def cases(network, exported: dict):
    """(name, torch call, onnxruntime call per exported variant) for the network's task."""
    rng = np.random.default_rng(0)
    if isinstance(network, RNNLanguageModel):
        vocab = network.vocab_size
        for name, batch, steps in (("LM step, batch 1", 1, 1), ("LM sequence, batch 32 x 35", 32, 35)):
            tokens = rng.integers(0, vocab, (batch, steps))
            state = network.init_state(batch)
            torch_tokens = torch.from_numpy(tokens)
            calls = {}
            for variant, predictor in exported.items():
                ort_state = predictor.zero_state(batch)
                calls[variant] = lambda p=predictor, s=ort_state, t=tokens: p.step(t, s)
            yield name, lambda t=torch_tokens, s=state: network(t, s), calls
    elif isinstance(network, SequenceClassifier):
        vocab = network.embedding.num_embeddings
        for name, batch in (("classify 1 x 200 tokens", 1), ("classify 32 x 200 tokens", 32)):
            tokens = rng.integers(1, vocab, (batch, 200))
            lengths = np.full(batch, 200)
            torch_inputs = (torch.from_numpy(tokens), torch.from_numpy(lengths))
            feed = dict(zip(names.CLASSIFIER_INPUTS, (tokens, lengths), strict=True))
            calls = {
                variant: lambda p=p, f=feed: p.sessions["model.onnx"].run(None, f) for variant, p in exported.items()
            }
            yield name, lambda i=torch_inputs: network(*i), calls
    elif isinstance(network, SequenceTagger):
        words = list(next(iter(exported.values())).tokenizers["tokenizer"].get_vocab())
        for name, batch in (("tag 1 sentence x 14 words", 1), ("tag 32 sentences x 14 words", 32)):
            sentences = [list(rng.choice(words, 14)) for _ in range(batch)]
            _, feed = next(iter(exported.values())).features(sentences)
            inputs = {k: torch.from_numpy(v) for k, v in feed.items()}
            mask = torch.ones(batch, 14, dtype=torch.bool)

            def torch_call(i=inputs, m=mask):
                return network.decode(network(*(i.get(name) for name in names.tagger_inputs(characters=True))), m)

            calls = {
                variant: lambda p=p, f=feed: p.sessions["model.onnx"].run([names.TAGS], f)
                for variant, p in exported.items()
            }
            yield name, torch_call, calls
    elif isinstance(network, Seq2Seq):
        words = list(next(iter(exported.values())).tokenizers["source_tokenizer"].get_vocab())
        for name, batch in (("decoder step, batch 1", 1), ("decoder step, batch 64 (e.g. 64 beams)", 64)):
            texts = [" ".join(rng.choice(words, 12)) for _ in range(batch)]
            calls = {}
            for variant, predictor in exported.items():
                memory, state = predictor.encode_graph(*predictor.encode_sources(texts))
                tokens = np.full(batch, predictor.bos, dtype=np.int64)
                calls[variant] = lambda p=predictor, t=tokens, s=state, m=memory: p.step(t, s, m)
            source, lengths = next(iter(exported.values())).encode_sources(texts)
            torch_memory, torch_state = network.encode(torch.from_numpy(source), torch.from_numpy(lengths))
            torch_tokens = torch.from_numpy(tokens)
            yield name, lambda t=torch_tokens, s=torch_state, m=torch_memory: network.decode_step(t, s, m), calls
    else:
        raise SystemExit(f"no benchmark case for {type(network).__name__}")


def bare_kernels(threads: int, repeats: int) -> None:
    """A lone ``nn.LSTM`` (200 -> 256, 32 x 200 steps) in both runtimes: the whole-sequence ceiling.
    Both run the same GEMMs on optimised CPU BLAS, so a fused-graph runtime cannot be much faster."""
    import io

    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    inputs = torch.randn(32, 200, 200)
    print(f"\nbare nn.LSTM 200 -> 256, batch 32 x 200 steps, {threads} thread(s), median of {repeats // 10} calls")
    print("| layer | torch eager | onnxruntime | speed-up |")
    print("| --- | ---: | ---: | ---: |")
    for bidirectional in (False, True):
        lstm = torch.nn.LSTM(200, 256, batch_first=True, bidirectional=bidirectional).eval()
        graph = io.BytesIO()
        torch.onnx.export(lstm, (inputs,), graph, input_names=["x"], dynamo=False, opset_version=17)
        session = onnxruntime.InferenceSession(graph.getvalue(), options, providers=["CPUExecutionProvider"])
        with torch.inference_mode():
            eager = median_seconds(lambda layer=lstm: layer(inputs), repeats // 10)
        ort = median_seconds(lambda s=session: s.run(None, {"x": inputs.numpy()}), repeats // 10)
        name = "BiLSTM" if bidirectional else "LSTM"
        print(f"| {name} | {eager * 1e3:,.1f} ms | {ort * 1e3:,.1f} ms | **{eager / ort:.2f}x** |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", default=None, help="a .ckpt or pretrained folder (default: a 2x200 LSTM LM)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--kernels", action="store_true", help="time a bare nn.LSTM/BiLSTM layer instead")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.kernels:
        return bare_kernels(args.threads, args.repeats)

    with tempfile.TemporaryDirectory() as tmp, as_pretrained_folder(args.source or Path(tmp) / "lm") as (source, _):
        if not args.source:
            source = default_language_model(Path(tmp) / "lm")
        export(source, Path(tmp) / "fp32")
        export(source, Path(tmp) / "int8", quantize="int8")
        exported = {v: deploy.load(Path(tmp) / v, threads=args.threads) for v in ("fp32", "int8")}
        network = load_source(source)[0].network.eval()

        print(f"\n{type(network).__name__}, {args.threads} thread(s), median of {args.repeats} calls")
        print("| case | torch eager | onnxruntime fp32 | onnxruntime int8 | fp32 speed-up | int8 / fp32 speed-up |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        with torch.inference_mode():
            for name, torch_call, ort_calls in cases(network, exported):
                eager = median_seconds(torch_call, args.repeats)
                fp32 = median_seconds(ort_calls["fp32"], args.repeats)
                int8 = median_seconds(ort_calls["int8"], args.repeats)
                print(
                    f"| {name} | {eager * 1e6:,.0f} µs | {fp32 * 1e6:,.0f} µs | {int8 * 1e6:,.0f} µs "
                    f"| **{eager / fp32:.2f}x** | **{fp32 / int8:.2f}x** |"
                )


if __name__ == "__main__":
    main()
