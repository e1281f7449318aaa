"""``rnnzoo serve --ray``: the service's FastAPI application as a Ray Serve deployment.

Each replica builds the same application as ``rnnzoo serve`` (``deploy.service.create_app``): its
own onnxruntime sessions, micro-batching and limits. Ray Serve's proxy routes the requests between
replicas, adds or removes replicas between ``--autoscale MIN:MAX`` by the number of requests in
flight, and places them across a Ray cluster. Needs the ``ray`` extra (``pip install 'rnnzoo[ray]'``).
A language model's sequences (``deploy.sequences``) live in the replica that holds their state, and the
proxy may send a sequence's next request to another: they are kept with one fixed replica, and
refused (400) with more.
"""

import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from deploy.service import Limits, create_app

APP_NAME = "rnnzoo"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class Scaling:
    replicas: int = 1  # a fixed number of replicas, unless ``autoscale`` is given
    autoscale: tuple[int, int] | None = None  # (min, max) replicas, scaled by the requests in flight
    threads: int = 1  # onnxruntime threads per model in a replica; each replica reserves this many CPUs

    def __post_init__(self):
        if self.replicas < 1:
            raise ValueError(f"--replicas must be >= 1, got {self.replicas}")
        if self.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {self.threads}")
        if self.autoscale is not None and not 0 <= self.autoscale[0] <= self.autoscale[1] >= 1:
            raise ValueError(f"--autoscale MIN:MAX needs 0 <= MIN <= MAX and MAX >= 1, got {self.autoscale}")

    @property
    def one_replica(self) -> bool:
        """Whether every request reaches the same replica: only then can a sequence's state live in it
        (Ray Serve's proxy routes each request to any replica; a sequence's next chunk would miss it)."""
        return self.autoscale is None and self.replicas == 1

    def deployment_options(self) -> dict:
        options: dict = {"ray_actor_options": {"num_cpus": self.threads}}
        if self.autoscale is None:
            options["num_replicas"] = self.replicas
        else:
            low, high = self.autoscale
            options["autoscaling_config"] = {"min_replicas": low, "max_replicas": high, "initial_replicas": max(low, 1)}
        return options


def parse_autoscale(value: str) -> tuple[int, int]:
    """``"MIN:MAX"`` -> ``(MIN, MAX)``."""
    low, separator, high = value.partition(":")
    if not separator or not low.strip().isdigit() or not high.strip().isdigit():
        raise ValueError(f"--autoscale takes MIN:MAX replicas, such as 1:4; got {value!r}")
    return int(low), int(high)


class Replica:
    """A Ray Serve replica; ``serve.ingress`` has it serve the application that
    ``__serve_build_asgi_app__`` builds once the replica has started."""

    def __init__(self, folders: list[str], limits: Limits, threads: int, sequences: bool):
        self.folders, self.limits, self.threads, self.sequences = folders, limits, threads, sequences

    def __serve_build_asgi_app__(self):
        return create_app(self.folders, self.limits, self.threads, sequences=self.sequences)


def application(folders: list[str], limits: Limits, scaling: Scaling):
    """The Ray Serve application serving ``folders``, by their absolute paths, which every node of
    the cluster must therefore see."""
    from ray import serve

    deployment = serve.deployment(serve.ingress()(Replica), name=APP_NAME, **scaling.deployment_options())
    folders = [os.path.abspath(folder) for folder in folders]
    return deployment.bind(folders, limits, scaling.threads, scaling.one_replica)


def start(folders: list[str], host: str, port: int, limits: Limits, scaling: Scaling, address: str | None = None):
    """Serve ``folders`` on Ray: a local Ray instance, or the cluster at ``address`` (``auto``: the
    one this machine belongs to). Returns once every replica is running."""
    if address is None and host in LOOPBACK:
        # Ray binds its own services (GCS, raylet, object manager, agents) to the node's address, and
        # turns 127.0.0.1 into this machine's network address unless it runs in single-machine mode
        # (its default on macOS and Windows). Set before Ray is imported: it reads it then.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
        from ray import serve
    except ImportError:
        raise ValueError("--ray needs Ray Serve: pip install 'rnnzoo[ray]'") from None
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, configure_logging=False, log_to_driver=False)
        except (ConnectionError, RuntimeError, TimeoutError) as err:
            where = f"join the Ray cluster at {address}" if address else "start a local Ray instance"
            raise ValueError(f"could not {where}: {err}") from None
    serve.start(http_options={"host": host, "port": port})
    serve.run(application(folders, limits, scaling), name=APP_NAME, route_prefix="/")


def serve_forever(folders, host, port, limits, scaling, address: str | None = None) -> None:
    """``start`` and serve until Ctrl-C or SIGTERM, then shut down what was started."""
    try:
        start(folders, host, port, limits, scaling, address)
        # Set after ray.init, which installs a SIGTERM handler of its own: the cleanup below runs on `kill` too.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        stop(joined=address is not None)


def replica_processes() -> list[int]:
    """The process ids of this machine's rnnzoo replicas (Ray names their processes ``ServeReplica:rnnzoo:…``)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if f"ServeReplica:{APP_NAME}".encode() in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
        except OSError:  # the process ended
            continue
    return pids


def stop(joined: bool = False) -> None:
    """Take the application down, with Serve and Ray unless they belong to a cluster this process
    ``joined``; nothing if Ray was never started."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return
    from ray import serve

    if joined:
        serve.delete(APP_NAME)
    else:
        serve.shutdown()
    ray.shutdown()
