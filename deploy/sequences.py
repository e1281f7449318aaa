"""Language-model sequences kept between requests: the state behind the Open Inference Protocol's
sequence extension (``sequence_id``, ``sequence_start``, ``sequence_end`` in a request's parameters).

A recurrent network's whole past is its state, of a size fixed by its config, so a client that sends a
conversation in chunks need not resend its history: the service keeps each sequence's state
(``deploy.tasks.language_model.Carried``) and reads only the new chunk into it. The store is bounded: at most
``max_sequences`` at once, each dropped after ``idle_s`` without a request; a new sequence beyond the
bound is refused (``Full``, a 429) rather than evicting one a client still uses.
"""

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field


class SequenceError(ValueError):
    """A request that names no live sequence, or names one badly (400)."""


class Full(Exception):
    """Every place in the store is taken by a live sequence (429)."""


@dataclass(eq=False)
class Sequence:
    """One client's conversation: what its model carries from one request to the next."""

    carried: object = None  # what its model carries (the predictor's ``Carried``); None until its first request
    used: float = 0.0  # when its last request ended (time.monotonic)
    running: int = 0  # its requests waiting or running; a running sequence does not expire
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # its requests run one at a time, in order


Key = int | str


def keeps_state(predictor) -> bool:
    """Whether a predictor can carry a sequence from one request to the next (a language model's)."""
    return hasattr(predictor, "continue_sequence")


def sequence_key(parameters: dict) -> Key | None:
    """The sequence a request's parameters name (None: not part of one, as an id of 0 or "" says)."""
    key = parameters.get("sequence_id")
    start, end = parameters.get("sequence_start", False), parameters.get("sequence_end", False)
    if not isinstance(start, bool) or not isinstance(end, bool):
        raise SequenceError("sequence_start and sequence_end must be true or false")
    if key is None or key == 0 or key == "":
        if start or end:
            raise SequenceError("sequence_start and sequence_end need a sequence_id (a non-zero integer or a string)")
        return None
    if isinstance(key, bool) or not isinstance(key, int | str):
        raise SequenceError(f"sequence_id must be an unsigned 64-bit integer or a string, not {key!r}")
    if isinstance(key, int) and not 0 < key < 2**64:
        raise SequenceError(f"sequence_id {key} is not an unsigned 64-bit integer")
    if isinstance(key, str) and len(key) > 256:
        raise SequenceError("a string sequence_id has at most 256 characters")
    return key


class SequenceStore:
    """The open sequences of one model by id, at most ``max_sequences``, none idle for over ``idle_s``."""

    def __init__(self, max_sequences: int, idle_s: float, clock: Callable[[], float] = time.monotonic):
        self.max_sequences, self.idle_s, self.clock = max_sequences, idle_s, clock
        self.sequences: dict[Key, Sequence] = {}

    def __len__(self) -> int:
        return len(self.sequences)

    def open(self, key: Key, start: bool) -> Sequence:
        """The sequence ``key`` for a request (``start``: a new one, or the same id begun again, which the
        request itself does by reading from an empty state)."""
        self.expire()
        sequence = self.sequences.get(key)
        if start:
            if sequence is None and len(self.sequences) >= self.max_sequences:
                raise Full(
                    f"{self.max_sequences} sequences are open (--max_sequences); end one with sequence_end, "
                    f"or retry once one has been idle for {self.idle_s:g} s"
                )
            if sequence is None:
                sequence = self.sequences[key] = Sequence()
        elif sequence is None:
            raise SequenceError(
                f"sequence {key!r} is not open (never started, ended, or idle for over {self.idle_s:g} s); "
                "start it with sequence_start"
            )
        sequence.running += 1
        return sequence

    def close(self, key: Key, sequence: Sequence, end: bool) -> None:
        """A request of ``sequence`` is done; ``end``: it was the sequence's last."""
        sequence.running -= 1
        sequence.used = self.clock()
        if end and self.sequences.get(key) is sequence:
            del self.sequences[key]

    def expire(self) -> None:
        deadline = self.clock() - self.idle_s
        for key in [k for k, s in self.sequences.items() if not s.running and s.used < deadline]:
            del self.sequences[key]
