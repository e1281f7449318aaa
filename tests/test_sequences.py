"""Language-model sequences over the Open Inference Protocol's sequence extension, driven by Triton's
HTTP client: a text sent in chunks continues as the whole text does, only the new chunk is read, the
store is bounded, and every misuse is a 4xx with a message."""

import asyncio
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi import HTTPException
from prometheus_client import CollectorRegistry, Counter, Histogram

from deploy import service
from deploy.runtime import load
from deploy.sequences import Sequence, SequenceError, SequenceStore, sequence_key
from deploy.tasks.language_model import LanguageModelPredictor
from tests.test_open_inference import strings, text_input, triton_client
from tests.test_service import HANG, InProcessServer, metric

httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is a dev dependency")
from tritonclient.utils import InferenceServerException  # noqa: E402

CHUNKS = ["w1 w2 w3", "w4 w5", "w6"]
GREEDY = {"max_new_tokens": 6, "temperature": 0}
SAMPLED = {"max_new_tokens": 6, "temperature": 1.0, "seed": 3}


@pytest.fixture(scope="module")
def server(exported):
    limits = service.Limits(max_parallel=1, max_sequences=3)
    server = InProcessServer(service.create_app([exported["lm"], exported["sentiment"]], limits, threads=1), limits)
    yield server
    server.close()


client = pytest.fixture(scope="module")(triton_client)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    from tests.exports import exported_models

    return exported_models(tmp_path_factory)


def continuation(client, text: str, parameters: dict, **sequence) -> str:
    result = client.infer("lm", [text_input([text], binary=True)], parameters=parameters, **sequence)
    return strings(result.as_numpy("continuation"))[0]


class Reads:
    """Every token the language model reads, call by call, with the state it reads them from."""

    def __init__(self, monkeypatch):
        self.calls: list[tuple[list[int], dict]] = []
        step = LanguageModelPredictor.step

        def recorded(predictor, tokens, state):
            self.calls.append((np.asarray(tokens)[0].tolist(), {k: v.copy() for k, v in state.items()}))
            return step(predictor, tokens, state)

        monkeypatch.setattr(LanguageModelPredictor, "step", recorded)


@pytest.mark.parametrize("options", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
@pytest.mark.parametrize("key", [7, "chat-7"], ids=["uint64", "string"])
def test_a_text_sent_in_chunks_continues_as_the_whole_text(client, options, key):
    whole = continuation(client, " ".join(CHUNKS), options)
    answers = [
        continuation(client, chunk, options, sequence_id=key, sequence_start=i == 0, sequence_end=i == len(CHUNKS) - 1)
        for i, chunk in enumerate(CHUNKS)
    ]
    assert [answer.startswith(chunk) for answer, chunk in zip(answers, CHUNKS, strict=True)] == [True] * 3
    assert " ".join(CHUNKS[:-1]) + " " + answers[-1] == whole  # the last chunk continues the whole text


def test_a_request_reads_only_its_chunk_from_the_state_the_earlier_ones_left(client, exported, monkeypatch):
    lm = load(exported["lm"], threads=1)
    ids = {token: lm.tokenizers["tokenizer"].token_to_id(token) for token in ["<eos>", "w1", "w2", "w3", "w4", "w5"]}
    reads = Reads(monkeypatch)
    continuation(client, "w1 w2 w3", GREEDY, sequence_id=11, sequence_start=True)
    first = len(reads.calls)
    continuation(client, "w4 w5", GREEDY, sequence_id=11, sequence_end=True)
    tokens, state = reads.calls[first]
    assert tokens == [ids["w3"], ids["w4"]]  # the last token before, then the chunk's own, but its last
    assert sum(len(tokens) for tokens, _ in reads.calls[first:]) == 2 + 1 + GREEDY["max_new_tokens"]
    _, expected = lm.step(np.array([[ids["<eos>"], ids["w1"], ids["w2"]]]), lm.zero_state(1))
    for name, value in expected.items():
        np.testing.assert_allclose(state[name], value, atol=1e-6)
        assert np.abs(value).max() > 0.01  # not the empty state


def test_starting_a_sequence_again_forgets_its_past(client):
    alone = continuation(client, "w6", SAMPLED)
    continuation(client, "w1 w2 w3", SAMPLED, sequence_id="again", sequence_start=True)
    assert continuation(client, "w6", SAMPLED, sequence_id="again", sequence_start=True, sequence_end=True) == alone


def test_an_empty_chunk_continues_from_where_the_text_stopped(client):
    whole = continuation(client, "w1 w2", GREEDY)
    continuation(client, "w1 w2", GREEDY, sequence_id=12, sequence_start=True)
    rest = continuation(client, "", GREEDY, sequence_id=12, sequence_end=True)
    assert rest and f"w1 w2 {rest}" == whole


def test_an_ended_or_unknown_sequence_is_a_400(client):
    continuation(client, "w1", GREEDY, sequence_id=21, sequence_start=True, sequence_end=True)
    for key in (21, 22, "never"):
        with pytest.raises(InferenceServerException, match="is not open") as err:
            continuation(client, "w2", GREEDY, sequence_id=key)
        assert err.value.status() == "400"


def test_a_new_sequence_beyond_max_sequences_is_a_429_until_one_ends(server, client):
    for key in (31, 32, 33):
        continuation(client, "w1", GREEDY, sequence_id=key, sequence_start=True)
    with pytest.raises(InferenceServerException, match="3 sequences are open") as err:
        continuation(client, "w1", GREEDY, sequence_id=34, sequence_start=True)
    assert err.value.status() == "429"
    assert metric(server.get("/metrics")[1], 'rnnzoo_open_sequences{model="lm"}') == 3
    continuation(client, "w2", GREEDY, sequence_id=33, sequence_start=True)  # begun again: no new place
    continuation(client, "w2", GREEDY, sequence_id=31, sequence_end=True)
    continuation(client, "w1", GREEDY, sequence_id=34, sequence_start=True, sequence_end=True)
    for key in (32, 33):
        continuation(client, "", GREEDY, sequence_id=key, sequence_end=True)
    assert metric(server.get("/metrics")[1], 'rnnzoo_open_sequences{model="lm"}') == 0


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"sequence_id": -1}, "unsigned 64-bit"),
        ({"sequence_id": 2**64}, "unsigned 64-bit"),
        ({"sequence_id": True}, "unsigned 64-bit integer or a string"),
        ({"sequence_id": 1.5}, "unsigned 64-bit integer or a string"),
        ({"sequence_id": [1]}, "unsigned 64-bit integer or a string"),
        ({"sequence_id": "x" * 257}, "at most 256"),
        ({"sequence_start": True}, "need a sequence_id"),
        ({"sequence_id": 0, "sequence_end": True}, "need a sequence_id"),
        ({"sequence_id": 5, "sequence_start": "yes"}, "true or false"),
    ],
)
def test_malformed_sequence_parameters_are_a_400(server, parameters, message):
    request = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["w1"]}]}
    status, body = server.post("/v2/models/lm/infer", request | {"parameters": parameters})
    assert status == 400 and message in body["error"], body


def test_sequences_are_for_one_text_of_a_language_model(server):
    two = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["w1", "w2"]}]}
    sequence = {"parameters": {"sequence_id": 41, "sequence_start": True}}
    status, body = server.post("/v2/models/lm/infer", two | sequence)
    assert status == 400 and "one text" in body["error"]
    status, body = server.post("/v2/models/sentiment/infer", two | sequence)
    assert status == 400 and "keeps no state between requests" in body["error"]


def test_the_service_advertises_sequences_and_what_one_costs(server, client, exported):
    assert {"sequence", "sequence(string_id)"} <= set(client.get_server_metadata()["extensions"])
    models = {model["name"]: model for model in json.loads(server.get("/v1/models")[1])["models"]}
    lm = load(exported["lm"], threads=1)
    assert models["lm"]["sequences"] == {"max_sequences": 3, "idle_s": 300.0, "state_bytes": lm.state_bytes}
    assert lm.state_bytes == sum(value.nbytes for value in lm.zero_state(1).values()) > 0
    assert "sequences" not in models["sentiment"]


def test_a_service_of_several_replicas_refuses_sequences(exported):
    limits = service.Limits()
    server = InProcessServer(service.create_app([exported["lm"]], limits, threads=1, sequences=False), limits)
    try:
        request = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["w1"]}]}
        status, body = server.post("/v2/models/lm/infer", request | {"parameters": {"sequence_id": 1}})
        assert status == 400 and "several replicas" in body["error"]
        assert "sequence" not in json.loads(server.get("/v2")[1])["extensions"]
    finally:
        server.close()


class HeldSequences:
    """A language model whose sequence calls wait until the test lets them run (``entered``, ``opened``)."""

    def __init__(self, predictor):
        self.predictor = predictor
        self.entered, self.opened = threading.Event(), threading.Event()

    def __getattr__(self, name: str):
        return getattr(self.predictor, name)

    def continue_sequence(self, *arguments):
        self.entered.set()
        assert self.opened.wait(HANG), "the test never let the call run"
        return self.predictor.continue_sequence(*arguments)


def test_waiting_for_a_sequences_turn_counts_as_queued(exported, monkeypatch):
    """A chunk waits while the sequence's earlier chunk runs; that wait takes room in the queue, so a
    flood of chunks to one sequence meets max_queue (503) as any other flood does."""
    held = HeldSequences(load(exported["lm"], threads=1))
    monkeypatch.setattr(service, "load", lambda folder, threads=None, memory_arena=True: held)
    limits = service.Limits(max_items=1, max_queue=1)
    server = InProcessServer(service.create_app([exported["lm"]], limits), limits)
    chunk = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["w1"]}]}
    try:
        with ThreadPoolExecutor(1) as pool:
            start = {"sequence_id": 51, "sequence_start": True}
            first = pool.submit(server.post, "/v2/models/lm/infer", chunk | {"parameters": start})
            assert held.entered.wait(HANG)
            status, body = server.post( "/v2/models/lm/infer", chunk | {"parameters": {"sequence_id": 51}})
            assert status == 503 and "at capacity" in body["error"]
            held.opened.set()
            assert first.result(HANG)[0] == 200
        assert server.post("/v2/models/lm/infer", chunk | {"parameters": {"sequence_id": 51}})[0] == 200
    finally:
        held.opened.set()
        server.close()


def test_waiting_for_a_sequences_turn_runs_under_the_request_timeout(exported):
    """A chunk whose sequence is busy (its lock held here, as a running chunk holds it) gets its 504
    once request_timeout_s is up, not whenever the chunks before it are done."""
    limits = service.Limits(request_timeout_s=0.1)
    predictor = load(exported["lm"], threads=1)
    registry = CollectorRegistry()
    requests = Counter("requests", "", ["model", "status"], registry=registry)
    metrics = requests, Histogram("seconds", "", ["model"], registry=registry)
    batcher = service.MicroBatcher(None, limits, lambda texts: None)
    model = service.ServedModel("lm", predictor, service.task_api(predictor), batcher, limits, *metrics)

    async def chunk_while_the_sequence_is_busy() -> int:
        sequence = Sequence()
        await sequence.lock.acquire()
        with pytest.raises(HTTPException) as refused:
            await asyncio.wait_for(model.continue_sequence(sequence, False, "w1", {}), HANG)
        return refused.value.status_code

    assert asyncio.run(chunk_while_the_sequence_is_busy()) == 504


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_idle_sequences_expire_but_not_while_a_request_runs():
    clock = Clock()
    store = SequenceStore(max_sequences=2, idle_s=10, clock=clock)
    idle, busy = store.open(1, start=True), store.open(2, start=True)
    store.close(1, idle, end=False)
    clock.now = 11
    with pytest.raises(SequenceError, match="idle for over 10 s"):
        store.open(1, start=False)
    assert store.open(2, start=False) is busy and len(store) == 1  # running all along
    store.close(2, busy, end=False)
    store.close(2, busy, end=True)
    assert len(store) == 0


def test_sequence_ids_zero_and_empty_mean_no_sequence():
    assert sequence_key({"sequence_id": 0}) is None and sequence_key({"sequence_id": ""}) is None
    assert sequence_key({"sequence_id": 2**64 - 1}) == 2**64 - 1


def test_only_one_fixed_ray_replica_keeps_sequences():
    from deploy.ray_serve import Scaling

    assert Scaling().one_replica
    assert not Scaling(replicas=2).one_replica and not Scaling(autoscale=(1, 1)).one_replica
