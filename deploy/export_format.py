"""The exported folder's ``config.json``: its format version and the schema the runtime checks.

``rnnzoo export`` writes it (``deploy.export``), the torch-free runtime reads it (``deploy.runtime``),
and both take the version and the checks from here. The fields:

- ``format_version``: ``FORMAT_VERSION``; a folder of another version is refused with a message.
- ``task``: a ``zoo.tasks`` name; ``architecture``: the zoo network it was exported from.
- ``tokenizers``: tokenizer name -> file; ``special_tokens``: tokenizer name -> ``{token: id}``.
- ``graphs``: graph file -> its ``inputs`` and ``outputs`` (name, dtype, shape with axis names).
- ``state``: the recurrent state carried from one graph call to the next, by role: ``inputs`` (graph
  input names), ``outputs`` (the graph outputs that give the next value of each, same order) and
  ``shape`` (``[layers, "batch", size]``, zeros at the start); ``{}`` for stateless graphs.
- ``memory``: the encoder outputs the translator's decoder step reads (graph names, both sides).
- ``members`` (translator ensembles only): one ``{"encoder", "decoder", "state", "memory"}`` per member,
  its graph files and the names above for them; the top-level ``state`` and ``memory`` are then empty
  and the runtime averages the members' next-word probabilities.
- ``labels``, ``language_pair``, ``decoding`` (``beam_size``, ``length_penalty``, ``max_new_tokens``),
  and what export measured: ``verification``, ``parity``, ``quantization``, ``source_sha256``.
"""

import json
from pathlib import Path

FORMAT_VERSION = 2
CONFIG_FILE = "config.json"
FIELDS = {
    "task": str,
    "tokenizers": dict,
    "special_tokens": dict,
    "graphs": dict,
    "state": dict,
    "memory": list,
    "decoding": dict,
}


def read_config(folder: Path) -> dict:
    """The checked ``config.json`` of an exported folder."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not an exported model folder: it has no {CONFIG_FILE}")
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(config, dict) or "graphs" not in config:
        raise ValueError(
            f"{folder} is not an exported model folder; `rnnzoo export --ckpt {folder} --out DIR` writes one"
        )
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{path}: export format {version!r}, this rnnzoo reads format {FORMAT_VERSION}: export the model again "
            "with `rnnzoo export --ckpt SOURCE --out DIR`"
        )
    wrong = [name for name, kind in FIELDS.items() if not isinstance(config.get(name), kind)]
    if wrong:
        raise ValueError(f"{path}: missing or malformed {', '.join(wrong)}; export the model again")
    return config


def check_graph(config: dict, file: str, inputs: list[str], outputs: list[str]) -> None:
    """Refuse a graph whose inputs/outputs are not those ``config.json`` describes, and state or memory
    names the graphs do not have."""
    described = config["graphs"][file]
    names = {
        "inputs": [value["name"] for value in described["inputs"]],
        "outputs": [v["name"] for v in described["outputs"]],
    }
    if names != {"inputs": inputs, "outputs": outputs}:
        raise ValueError(f"{file}: its inputs/outputs {inputs}/{outputs} are not those config.json describes ({names})")
