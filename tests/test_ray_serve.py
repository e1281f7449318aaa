"""``rnnzoo serve --ray``: the service as a Ray Serve deployment on a local Ray instance (127.0.0.1)."""

import json
import urllib.error
import urllib.request

import pytest

from deploy.runtime import load
from deploy.service import Limits
from lightning_modules.cli import main
from tests.exports import exported_models
from tests.test_service import free_port


def post(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_two_replicas_answer_as_the_models_do(tmp_path_factory):
    pytest.importorskip("ray.serve", reason="Ray Serve is the `ray` extra: pip install 'rnnzoo[ray]'")
    from ray import serve

    from deploy import ray_serve

    folders = exported_models(tmp_path_factory)
    port = free_port()
    limits = Limits(max_items=4, max_queue=64)
    try:
        ray_serve.start([folders["sentiment"], folders["translator"]], "127.0.0.1", port, limits, ray_serve.Scaling(2))
        replicas = serve.status().applications[ray_serve.APP_NAME].deployments[ray_serve.APP_NAME].replica_states
        assert replicas == {"RUNNING": 2}
        url = f"http://127.0.0.1:{port}/v1/models"

        texts = ["w1 w2 w3", "w4", "w5 w6"]
        expected = load(folders["sentiment"], threads=1).classify(texts)
        for _ in range(4):  # requests go to either replica: every answer is the model's
            assert post(f"{url}/sentiment/predict", {"texts": texts}) == (
                200,
                {"model": "sentiment", "predictions": expected},
            )
        translations = load(folders["translator"], threads=1).translate(texts, beam_size=2)
        assert post(f"{url}/translator/predict", {"texts": texts, "beam_size": 2})[1]["translations"] == translations

        # The service's limits and messages are the same as without Ray.
        status, body = post(f"{url}/sentiment/predict", {"texts": ["w1"] * 5})
        assert status == 413 and "at most 4" in body["detail"]
        assert post(f"{url}/sentiment/predict", {"texts": [" "]})[0] == 422
        assert post(f"{url}/nothing/predict", {"texts": ["w1"]})[0] == 404
    finally:
        ray_serve.stop()


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--replicas", "2"], "need --ray"),
        (["--ray", "--autoscale", "3"], "MIN:MAX"),
        (["--ray", "--autoscale", "4:2"], "0 <= MIN <= MAX"),
        (["--ray", "--replicas", "0"], "--replicas must be >= 1"),
    ],
)
def test_bad_ray_options_are_refused_before_ray_starts(tmp_path_factory, capsys, arguments, message):
    folder = exported_models(tmp_path_factory)["sentiment"]
    with pytest.raises(SystemExit):
        main(["serve", str(folder), *arguments])
    assert message in capsys.readouterr().err


def test_a_cluster_that_is_not_there_is_one_line(tmp_path_factory, capsys):
    pytest.importorskip("ray.serve", reason="Ray Serve is the `ray` extra: pip install 'rnnzoo[ray]'")
    folder = exported_models(tmp_path_factory)["sentiment"]
    with pytest.raises(SystemExit):
        main(["serve", str(folder), "--ray", "--ray_address", "auto"])
    assert "could not join the Ray cluster at auto" in capsys.readouterr().err
