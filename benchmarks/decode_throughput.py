"""Translation decoding speed: sentences/s of greedy vs beam search at batch 1 and batch 64.

Decodes the first ``--sentences`` source sentences of a split with a trained checkpoint (or, with
``--config``, the untrained network of a zoo config, which measures speed only), all four settings
in one run, and prints the table and the ratios.

    python benchmarks/decode_throughput.py --ckpt checkpoints/multi30k_bahdanau/last.ckpt
    python benchmarks/decode_throughput.py --config zoo/configs/multi30k_bahdanau.yaml
"""

import argparse
import time

import torch
from tqdm import tqdm

from datamodules import TranslationDataModule
from lightning_modules import TranslationTask
from zoo import create_model
from zoo.networks.seq2seq import translate_ids


def load(args) -> tuple[torch.nn.Module, list[str], tuple[int, int], TranslationTask | None]:
    data = TranslationDataModule(data_dir=args.data_dir)
    texts = [data.pair(row)[0] for row in data.splits[args.split].select(range(args.sentences))]
    if args.ckpt:
        task = TranslationTask.load_from_checkpoint(args.ckpt, map_location="cpu").eval()
        return task.net, texts, task._special_ids, task
    name = args.config.rsplit("/", 1)[-1].removesuffix(".yaml")
    net = create_model(name, source_vocab_size=data.source_vocab_size, target_vocab_size=data.target_vocab_size)
    task = TranslationTask(data.source_vocab_size, data.target_vocab_size)
    task.net = net.eval()
    task.tokenizer_jsons = {
        "source_tokenizer": data.source_tokenizer.to_str(),
        "target_tokenizer": data.target_tokenizer.to_str(),
    }
    return net, texts, task._special_ids, task


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", help="a translation checkpoint")
    source.add_argument("--config", help="a zoo translation config (untrained weights)")
    parser.add_argument("--data_dir", default="../shared/data/multi30k")
    parser.add_argument("--split", default="test")
    parser.add_argument("--sentences", type=int, default=256)
    parser.add_argument("--beam_size", type=int, default=5)
    args = parser.parse_args()

    net, texts, (bos, eos), task = load(args)
    rates = {}
    settings = [(batch_size, beam) for batch_size in (1, 64) for beam in (1, args.beam_size)]
    for batch_size, beam in tqdm(settings, desc="settings", disable=None):  # stderr, TTY only: stdout stays the table
        start = time.perf_counter()
        for i in range(0, len(texts), batch_size):
            source_ids, lengths = task.encode_sources(texts[i : i + batch_size])
            translate_ids(net, source_ids, lengths, bos, eos, beam)
        rates[batch_size, beam] = len(texts) / (time.perf_counter() - start)

    print(f"\n{len(texts)} {args.split} sentences, {torch.get_num_threads()} threads")
    print(f"| batch | {'greedy sent/s':>13} | {f'beam {args.beam_size} sent/s':>13} | greedy / beam |")
    print("|------:|--------------:|--------------:|--------------:|")
    for batch_size in (1, 64):
        greedy, beam = rates[batch_size, 1], rates[batch_size, args.beam_size]
        print(f"| {batch_size:>5} | {greedy:>13.1f} | {beam:>13.1f} | {greedy / beam:>12.2f}x |")
    print(
        f"\nbatch 64 / batch 1: greedy {rates[64, 1] / rates[1, 1]:.1f}x, "
        f"beam {rates[64, args.beam_size] / rates[1, args.beam_size]:.1f}x"
    )


if __name__ == "__main__":
    main()
