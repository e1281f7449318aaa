"""The names of every exported graph's inputs and outputs, by task: the graph writer
(``deploy.graphs``) names its tensors from here and the runtime (``deploy.runtime``) feeds and reads
them from here, so the two cannot drift. Torch-free.

A recurrent state is named after its parts (``h``, ``c`` for an LSTM's cell, ``feed`` for the
translator's input feeding); its next value is the output of the same name with ``_out``.
"""

TOKENS, LENGTHS, LOGITS = "tokens", "lengths", "logits"

# Classifier: tokens (B, T) right-padded, lengths (B,) -> logits (B, classes).
CLASSIFIER_INPUTS, CLASSIFIER_OUTPUTS = [TOKENS, LENGTHS], [LOGITS]

# Tagger: tokens, lengths (and, with character features, chars (B, T, W) and char_lengths (B, T))
# -> emissions (B, T, tags) and the decoded tag ids (B, T).
CHARS, CHAR_LENGTHS, EMISSIONS, TAGS = "chars", "char_lengths", "emissions", "tags"
TAGGER_OUTPUTS = [EMISSIONS, TAGS]

# Translator: an encoder graph (source, lengths -> memory, initial state) and a decoder-step graph
# (tokens (B,), state, memory -> logits (B, V), next state and, with attention, its weights (B, S)).
SOURCE, ATTENTION = "source", "attention"
ENCODER_INPUTS = [SOURCE, LENGTHS]
# What the decoder step reads from the encoded source, by how the decoder sees it (``Seq2Seq.context``):
# the ``zoo.networks.seq2seq.Memory`` field and the graph tensor it becomes.
MEMORY = {
    "initial": {},
    "every_step": {"summary": "summary"},
    "attention": {"outputs": "memory", "mask": "memory_mask", "keys": "keys"},
}

# Forecaster: series (B, L, C) in the data's units -> forecast (B, H, C), the next H rows.
SERIES, FORECAST = "series", "forecast"


def tagger_inputs(characters: bool) -> list[str]:
    return [TOKENS, LENGTHS, *([CHARS, CHAR_LENGTHS] if characters else [])]


def state_names(stack_state: tuple[str, ...], input_feeding: bool = False) -> list[str]:
    """The state tensors of a recurrent network, as graph inputs: its stack's (``RecurrentStack.state_names``)
    and, with input feeding, the attention vector fed back."""
    return [*stack_state, *(["feed"] if input_feeding else [])]


def next_state(names: list[str]) -> list[str]:
    """The outputs that give the next value of each state input."""
    return [f"{name}_out" for name in names]


def decoder_outputs(state: list[str], attention: bool) -> list[str]:
    return [LOGITS, *next_state(state), *([ATTENTION] if attention else [])]
