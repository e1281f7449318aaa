"""Property-based fuzzing of every task's request schema (the app in-process) and predictor: arbitrary
Unicode (lone surrogates included), lengths, types and parameter values give an answer or a 4xx (a
ValueError from a predictor), never a 5xx or a hang."""

import json

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deploy.runtime import load
from deploy.service import create_app
from deploy.serving import Limits
from tests.exports import exported_models
from tests.test_service import SlowCallbacks, loop_in_debug_mode
from zoo.common import tasks

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
WORDS = [f"w{i}" for i in range(20)]
TASKS = {"sentiment": "classification", "translator": "translation", "tagger": "tagging", "lm": "language_model"}

characters = st.characters(exclude_categories=())  # every code point, lone surrogates included
texts = st.one_of(
    st.text(characters, max_size=40),
    st.lists(st.one_of(st.sampled_from(WORDS), st.text(characters, max_size=3)), max_size=30).map(" ".join),
    st.sampled_from(["", " ", "\udc80", "w1 \ud800 w2", "w1\x00w2", "\u200b", "b" * 200, "w1 " * 150]),
)
anything = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(characters, max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


def number(low: int, high: int):
    """Mostly values near the valid range, sometimes anything at all."""
    return st.one_of(st.integers(low - 3, high + 3), st.floats(allow_nan=True), anything)


# Parameters a predictor accepts, and anything at all for the service's schema to refuse.
GOOD_PARAMETERS = {
    "sentiment": {},
    "tagger": {},
    "translator": {"beam_size": st.integers(1, 16), "max_new_tokens": st.integers(1, 64), "attention": st.booleans()},
    "lm": {
        "max_new_tokens": st.integers(1, 30),
        "temperature": st.one_of(st.floats(0, 10), st.just(1e-300)),
        "top_k": st.none() | st.integers(1, 40),
        "seed": st.none() | st.integers(0, 2**70),
    },
}
ANY_PARAMETERS = {
    "forecaster": {},
    "sentiment": {},
    "tagger": {},
    "translator": {"beam_size": number(1, 16), "max_new_tokens": number(1, 512), "attention": st.booleans() | anything},
    "lm": {
        "max_new_tokens": number(1, 1000),
        "temperature": st.one_of(st.floats(allow_nan=True, allow_infinity=True), anything),
        "top_k": number(1, 30),
        "seed": number(0, 2**70),
    },
}


def bodies(name: str):
    """Well-formed requests with arbitrary texts, malformed ones, and bytes that are not JSON."""
    field = tasks.get(TASKS[name]).load("api").items_field
    well_formed = st.fixed_dictionaries(
        {field: st.lists(texts, min_size=1, max_size=8)}, optional=GOOD_PARAMETERS[name]
    )
    malformed = st.fixed_dictionaries({field: st.lists(texts, max_size=10) | anything}, optional=ANY_PARAMETERS[name])
    return st.one_of(well_formed, malformed).map(lambda payload: json.dumps(payload).encode()) | st.binary(max_size=50)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    return exported_models(tmp_path_factory)


@pytest.fixture(scope="module")
def client(exported):
    limits = Limits(
        max_items=8, max_text_chars=300, max_body_bytes=20_000, max_beam_tokens=200, max_attention_cells=400,
        request_timeout_s=30,
    )  # fmt: skip
    with TestClient(loop_in_debug_mode(create_app(exported.values(), limits, threads=1))) as client:
        yield client


@pytest.mark.parametrize("name", TASKS)
def test_requests_get_an_answer_or_a_4xx(client, name):
    @FUZZ
    @given(bodies(name))
    def check(body: bytes):
        response = client.post(f"/v1/models/{name}/predict", content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 200 or 400 <= response.status_code < 500, (response.status_code, body)
        answer = response.json()
        if response.status_code == 200:
            request = json.loads(body)
            field = tasks.get(TASKS[name]).load("api").items_field
            assert len(answer["predictions"]) == len(request[field])
        else:
            assert answer["detail"]

    check()


PREDICTOR_CALLS = {
    "sentiment": lambda p, items, _: p.classify(items),
    "tagger": lambda p, items, _: p.tag(items),
    "translator": lambda p, items, params: p.translate(items, **params),
    "lm": lambda p, items, params: [p.generate(item, **params) for item in items],
}


@pytest.mark.parametrize("name", TASKS)
def test_predictors_answer_or_raise_a_value_error(exported, name):
    predictor = load(exported[name], threads=1)
    parameters = GOOD_PARAMETERS[name] | ({"budget": st.integers(1, 400)} if name == "translator" else {})

    @FUZZ
    @given(st.lists(texts, min_size=1, max_size=8), st.fixed_dictionaries(parameters))
    def check(items: list[str], params: dict):
        try:
            results = PREDICTOR_CALLS[name](predictor, items, params)
        except ValueError as err:
            assert str(err)
        else:
            assert len(results) == len(items)

    check()


# Sizes a shape may hold: small ones, zero, negative, huge (past int64 and uint64), and things that are no size.
DIMENSIONS = st.one_of(
    st.integers(-2, 10),
    st.sampled_from([0, 4_000_000, 2**31 - 1, 2**63, 2**64, 10**30, -(2**63)]),
    st.booleans(),
    st.floats(),
    st.text(max_size=3),
    st.none(),
)
OUTPUT_NAMES = ["label", "probabilities", "tags", "translation", "continuation", "forecast"]


def v2_bodies(name: str):
    """Open Inference Protocol requests with an arbitrary head: shapes of rank 0-8 with any sizes,
    datatypes, tensor data and parameters of every JSON type, requested outputs, and binary sections
    of arbitrary lengths (the JSON header's length, binary_data_size, element sizes)."""
    tensor_parameters = st.dictionaries(st.sampled_from(["binary_data_size", "x"]), st.integers(-1, 300) | anything)
    numbers = st.lists(st.floats() | st.integers() | st.sampled_from([10**400, 3e38, "1"]), max_size=20)
    tensor = st.fixed_dictionaries(
        {
            "name": st.sampled_from(["text", "series", "x"]) | anything,
            "datatype": st.sampled_from(["BYTES", "FP32", "INT64"]) | anything,
            "shape": st.lists(DIMENSIONS, max_size=8) | anything,
        },
        optional={"data": st.lists(texts, max_size=9) | numbers | anything, "parameters": tensor_parameters | anything},
    )
    sequence = {
        "sequence_id": st.integers(-1, 3) | st.sampled_from(["", "s", 2**64]) | anything,
        "sequence_start": st.booleans() | anything,
        "sequence_end": st.booleans() | anything,
    }
    parameters = st.fixed_dictionaries({}, optional=sequence) | st.dictionaries(
        st.sampled_from([*ANY_PARAMETERS[name], "binary_data_output", "x"]), anything
    )
    output = st.fixed_dictionaries(
        {}, optional={"name": st.sampled_from(OUTPUT_NAMES) | anything, "parameters": anything}
    )
    outputs = st.lists(output, max_size=3) | anything
    request = st.fixed_dictionaries(
        {"inputs": st.lists(tensor, max_size=2) | anything},
        optional={"parameters": parameters | anything, "outputs": outputs, "id": anything},
    )
    odd_lengths = st.sampled_from(["\u00b2", "\u00b9\u00b3", "9" * 5000, "", "0x10"])
    header_lengths = st.integers(-3, 400).map(str) | odd_lengths
    framed = st.tuples(request.map(lambda r: json.dumps(r).encode()), st.binary(max_size=60), header_lengths)
    return st.one_of(
        request.map(lambda r: (json.dumps(r).encode(), None)),
        framed.map(lambda f: (f[0] + f[1], str(len(f[0])) if f[2] == "-1" else f[2])),
        st.tuples(st.binary(max_size=80), st.none() | st.text(max_size=6)),
    )


@pytest.mark.parametrize("name", [*TASKS, "forecaster"])
def test_v2_requests_get_an_answer_or_a_4xx_without_holding_the_loop(client, name):
    """Never a 5xx, always valid JSON (no bare NaN or Infinity), and no request that holds the event loop
    over 100 ms by the loop's own report."""

    @FUZZ
    @given(v2_bodies(name))
    def check(body_and_header):
        body, header = body_and_header
        headers = {"Content-Type": "application/json"}
        if header is not None:
            headers["Inference-Header-Content-Length"] = header

        def send():
            response = client.post(f"/v2/models/{name}/infer", content=body, headers=headers)
            assert response.status_code == 200 or 400 <= response.status_code < 500, (response.status_code, body)
            if response.headers["content-type"] == "application/json":
                answer = json.loads(response.text, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))
                assert response.status_code == 200 or answer["error"]

        try:
            assert watch.every_time(send) == [], body
        except UnicodeEncodeError:  # a header value httpx cannot send: no request was made
            return

    with SlowCallbacks() as watch:
        check()


def generate_bodies(name: str):
    """``generate`` requests: arbitrary texts and parameters, other fields, and bytes that are not JSON."""
    request = st.fixed_dictionaries(
        {"text_input": texts | anything},
        optional={"parameters": st.fixed_dictionaries({}, optional=ANY_PARAMETERS[name]) | anything, "x": anything},
    )
    return request.map(lambda r: json.dumps(r).encode()) | st.binary(max_size=50)


@pytest.mark.parametrize("name", ["lm", "translator"])
@pytest.mark.parametrize("route", ["generate", "generate_stream"])
def test_v2_generate_requests_get_an_answer_or_a_4xx(client, name, route):
    @FUZZ
    @given(generate_bodies(name))
    def check(body: bytes):
        response = client.post(f"/v2/models/{name}/{route}", content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 200 or 400 <= response.status_code < 500, (response.status_code, body)
        if response.status_code >= 400:
            assert response.json()["error"]
        elif route == "generate_stream":
            events = [json.loads(line[len("data: ") :]) for line in response.text.split("\n\n") if line]
            assert all("text_output" in event for event in events), events

    check()
