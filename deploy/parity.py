"""Task-level parity of an exported folder with its PyTorch network on real held-out examples.

Both sides get the same ids from the exported folder's own tokenizers, so any difference comes
from the graph. Reported per task: the fraction of identical predictions and the task metric of
each side (accuracy, tag accuracy, sacreBLEU, perplexity, forecast MSE and MAE).
"""

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

import deploy
from deploy import signatures as names
from zoo.common import tasks
from zoo.networks.seq2seq import translate_ids


def _batches(items: list, size: int):
    for start in tqdm(range(0, len(items), size), desc="parity", unit="batch", disable=None):  # stderr, TTY only
        yield items[start : start + size]


@torch.no_grad()
def task_parity(folder, network: nn.Module, test, examples: int = 1000, batch_size: int = 64) -> dict:
    """Compare ``deploy.load(folder)`` with ``network`` on ``examples`` evenly spaced rows of ``test``
    (splits are often sorted by label)."""
    predictor = deploy.load(folder)
    network = network.eval()
    rows = test.select(np.unique(np.linspace(0, len(test) - 1, min(examples, len(test))).astype(int)))
    run = tasks.get(predictor.task).load("parity")
    return {"examples": len(rows), **run(predictor, network, rows, batch_size)}


def classification_parity(predictor, network, rows, batch_size) -> dict:
    same = onnx_right = torch_right = 0
    for batch in _batches(list(zip(rows["text"], rows["label"], strict=True)), batch_size):
        texts = [text for text, _ in batch]
        ids, lengths = predictor.encode(texts)
        from_onnx = predictor.logits(texts).argmax(-1)
        from_torch = network(torch.from_numpy(ids), torch.from_numpy(lengths)).argmax(-1).numpy()
        gold = np.array([label for _, label in batch])
        same += int((from_onnx == from_torch).sum())
        onnx_right, torch_right = (
            onnx_right + int((from_onnx == gold).sum()),
            torch_right + int((from_torch == gold).sum()),
        )
    n = len(rows)
    return {"same_label": same / n, "onnx_accuracy": onnx_right / n, "torch_accuracy": torch_right / n}


def tagging_parity(predictor, network, rows, batch_size) -> dict:
    same = total = 0
    for sentences in _batches([words for words in rows["tokens"] if words], batch_size):
        words, feed = predictor.features(sentences)
        from_onnx = predictor.sessions["model.onnx"].run([names.TAGS], feed)[0]
        inputs = {name: torch.from_numpy(value) for name, value in feed.items()}
        features = [inputs.get(name) for name in names.tagger_inputs(characters=True)]
        emissions = network(*features)
        mask = torch.arange(emissions.size(1)).unsqueeze(0) < inputs[names.LENGTHS].unsqueeze(1)
        from_torch = network.decode(emissions, mask).numpy()
        valid = mask.numpy()
        same, total = same + int(((from_onnx == from_torch) & valid).sum()), total + int(valid.sum())
    return {"same_tag": same / total, "tokens": total}


def translation_parity(predictor, network, rows, batch_size) -> dict:
    import sacrebleu

    source_lang, target_lang = predictor.config.language_pair.split("-")
    sources, references = rows[source_lang], rows[target_lang]
    settings = predictor.config.decoding
    beam, length_penalty = settings.beam_size, settings.length_penalty
    from_onnx, from_torch = [], []
    for texts in _batches(sources, batch_size):
        from_onnx += predictor.translate(texts)
        source, lengths = predictor.encode_sources(texts)
        ids = translate_ids(
            network, torch.from_numpy(source), torch.from_numpy(lengths), predictor.bos, predictor.eos, beam,
            settings.max_new_tokens, length_penalty,
        )  # fmt: skip
        from_torch += predictor.tokenizers["target_tokenizer"].decode_batch(ids)
    same = sum(a == b for a, b in zip(from_onnx, from_torch, strict=True)) / len(sources)
    bleu = {
        side: sacrebleu.corpus_bleu(out, [references]).score
        for side, out in (("onnx", from_onnx), ("torch", from_torch))
    }
    return {"same_translation": same, "onnx_bleu": bleu["onnx"], "torch_bleu": bleu["torch"], "beam_size": beam}


def language_model_parity(predictor, network, rows, batch_size) -> dict:
    eos = predictor.special_tokens["tokenizer"]["<eos>"]
    tokenizer = predictor.tokenizers["tokenizer"]
    nll = {"onnx": 0.0, "torch": 0.0}
    count = 0
    for sentence in tqdm(rows["sentence"], desc="parity", unit="sentence", disable=None):
        ids = np.array([[eos, *tokenizer.encode(sentence).ids, eos]])
        inputs, targets = ids[:, :-1], torch.from_numpy(ids[:, 1:]).flatten()
        logits = {
            "onnx": torch.from_numpy(predictor.step(inputs, predictor.zero_state(1))[0]),
            "torch": network(torch.from_numpy(inputs))[0],
        }
        for side, value in logits.items():
            nll[side] += float(F.cross_entropy(value.flatten(0, 1), targets, reduction="sum"))
        count += len(targets)
    return {f"{side}_perplexity": math.exp(total / count) for side, total in nll.items()} | {"tokens": count}


def forecasting_parity(predictor, network, rows, batch_size) -> dict:
    """``rows``: held-out windows, ``series`` and ``target`` in the data's units (``ETTDataModule.parity_rows``);
    the errors are on the scaled values, as the benchmark reports them."""
    columns = rows.with_format("numpy")[:]
    series, target = columns["series"].astype(np.float32), columns["target"].astype(np.float64)
    from_onnx = np.concatenate([predictor.forecast_values(batch) for batch in _batches(series, batch_size)])
    from_torch = np.concatenate(
        [network.forecast(torch.from_numpy(batch)).numpy() for batch in _batches(series, batch_size)]
    )
    std = network.std.double().numpy()
    errors = {side: (values - target) / std for side, values in (("onnx", from_onnx), ("torch", from_torch))}
    return {
        "max_abs_diff": float(np.abs(from_onnx.astype(np.float64) - from_torch).max()),
        **{f"{side}_mse": float((error**2).mean()) for side, error in errors.items()},
        **{f"{side}_mae": float(np.abs(error).mean()) for side, error in errors.items()},
    }
