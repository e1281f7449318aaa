"""``rnnzoo serve --ray``: the service as a Ray Serve deployment on a local Ray instance (127.0.0.1)."""

import os
import select
from pathlib import Path

import pytest

from deploy.ray_serve import replica_processes
from deploy.runtime import load
from lightning_modules.cli import main
from tests.conftest import rnnzoo
from tests.exports import exported_models
from tests.test_service import HANG, Server

# One worker runs them all (pytest -n): a second local Ray instance would be found by `--ray_address auto`.
pytestmark = pytest.mark.xdist_group("ray")


def wait_for_exit(pid: int) -> None:
    """Until process ``pid`` (not a child of this one) has ended: its pidfd becomes readable then."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:  # already gone
        return
    try:
        assert select.select([fd], [], [], HANG)[0], f"process {pid} did not end"
    finally:
        os.close(fd)


# 127.0.0.1, ::1 and ::ffff:127.0.0.1 as /proc/net writes them
LOOPBACK = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}


def processes_named(*names: bytes) -> list[int]:
    """The ids of the processes whose command line holds one of ``names``."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if any(name in cmdline.read_bytes() for name in names):
                pids.append(int(cmdline.parent.name))
        except OSError:  # the process ended
            continue
    return pids


def descendants(pid: int) -> set[int]:
    """``pid`` and every process started under it, by their parents (``/proc/*/stat``)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):  # the process ended
            continue
    family, grown = {pid}, True
    while grown:
        children = {child for child, parent in parents.items() if parent in family} - family
        family |= children
        grown = bool(children)
    return family


def listening_sockets() -> dict[str, str]:
    """The local address (hex, as /proc/net writes it) of every listening TCP socket, by inode."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            for fields in (row.split() for row in list(rows)[1:]):
                if fields[3] == "0A":  # LISTEN
                    found[fields[9]] = fields[1].split(":")[0]
    return found


def socket_owners(inodes) -> dict[str, int]:
    """The process holding each socket ``inode``."""
    owners = {}
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        try:
            target = os.readlink(fd)
        except OSError:  # the process or descriptor is gone
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            owners[target[8:-1]] = int(fd.parts[2])
    return owners


def test_serve_ray_with_two_replicas_answers_as_the_models_do_and_stops_ray(tmp_path_factory):
    pytest.importorskip("ray.serve", reason="Ray Serve is the `ray` extra: pip install 'rnnzoo[ray]'")
    folders = exported_models(tmp_path_factory)
    before = listening_sockets()
    # `rnnzoo serve --ray` in a process that cannot import torch, as in a production image.
    server = Server([folders["sentiment"], folders["translator"]], "--ray", "--replicas", "2", "--max_items", "4")
    try:
        # Only the service's own processes count: another Ray, or other tests, may run on this machine.
        session = descendants(server.process.pid)
        replicas = [pid for pid in replica_processes() if pid in session]
        ray_core = [pid for pid in processes_named(b"gcs_server", b"raylet") if pid in session]
        assert len(replicas) == 2 and ray_core
        # Ray's own services listen on 127.0.0.1 too; the one exception is each replica's gRPC port for
        # calls between deployments, which Ray Serve binds to every interface with no option to change.
        opened = {inode: address for inode, address in listening_sockets().items() if inode not in before}
        owners = {inode: pid for inode, pid in socket_owners(list(opened)).items() if pid in session}
        beyond = [inode for inode in owners if opened[inode] not in LOOPBACK]
        assert owners and {owners[inode] for inode in beyond} <= set(replicas) and len(beyond) <= len(replicas)
        texts = ["w1 w2 w3", "w4", "w5 w6"]
        expected = load(folders["sentiment"], threads=1).classify(texts)
        for _ in range(4):  # requests go to either replica: every answer is the model's
            assert server.post("/v1/models/sentiment/predict", {"texts": texts}) == (
                200,
                {"model": "sentiment", "predictions": expected},
            )
        translations = load(folders["translator"], threads=1).translate(texts, beam_size=2)
        request = {"texts": texts, "beam_size": 2}
        assert server.post("/v1/models/translator/predict", request)[1]["translations"] == translations

        # The service's limits and messages are the same as without Ray.
        status, body = server.post("/v1/models/sentiment/predict", {"texts": ["w1"] * 5})
        assert status == 413 and "at most 4" in body["detail"]
        assert server.post("/v1/models/sentiment/predict", {"texts": [" "]})[0] == 422
        assert server.post("/v1/models/nothing/predict", {"texts": ["w1"]})[0] == 404
    finally:
        server.close()  # SIGTERM: the command shuts Serve and its local Ray down
    # Every process of the instance, its GCS and raylet too: `--ray_address auto` below would find a GCS still
    # shutting down and wait on it for good.
    for pid in replicas + ray_core:
        wait_for_exit(pid)
    assert not replica_processes()


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


def test_a_cluster_that_is_not_there_is_one_line(tmp_path_factory):
    pytest.importorskip("ray.serve", reason="Ray Serve is the `ray` extra: pip install 'rnnzoo[ray]'")
    folder = exported_models(tmp_path_factory)["sentiment"]
    # In a fresh process, as a user runs it: Ray caches the GCS addresses it has seen in a process, so
    # in this one `auto` would find the local instance an earlier test shut down and wait on it for minutes.
    # A GCS process an earlier test left behind can still be listed; Ray would retry it for minutes.
    quick = {"RAY_gcs_server_port_wait_time_s": "5"}
    result = rnnzoo(folder, "serve", str(folder), "--ray", "--ray_address", "auto", env=quick, check=False)
    assert result.returncode != 0
    assert "could not join the Ray cluster at auto" in result.stderr
    assert "Traceback" not in result.stderr
