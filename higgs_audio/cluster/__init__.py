"""``higgs-audio cluster``: the server on Ray Serve, one engine replica per GPU (or CPU node), many nodes
(needs the ``[cluster]`` extra).

- ``higgs-audio cluster run --replicas N [--address auto] [serve's model flags]`` starts (or joins) Ray and
  runs the application until interrupted.
- ``app`` is the application builder for Ray's own tools: ``serve run higgs_audio.cluster:app replicas=2``,
  or ``import_path: higgs_audio.cluster:app`` with ``args:`` in a ``serve deploy`` config (docs/scaling.md).

The application itself is in deployments.py, the voice-affinity router in router.py. This module stays
light: Ray is imported only when something runs.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading

from higgs_audio.options import Parser, at_least, common_parser
from higgs_audio.server import add_serve_arguments


def add_cluster_parser(subparsers, parents=()) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "cluster", help="serve on a Ray cluster: many engine replicas behind the same routes",
        description="Run the OpenAI-compatible server on Ray Serve: an ingress with the routes of "
        "'higgs-audio serve', engine replicas (one engine each) behind it, voice-affinity routing.")
    sub = p.add_subparsers(dest="cluster_command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", parents=list(parents), help="start the application and serve until interrupted",
                         description="Start (or join, with --address) a Ray cluster and serve on it.")
    add_cluster_arguments(run)
    run.set_defaults(run=run_cluster)
    return p


def add_cluster_arguments(p: argparse.ArgumentParser) -> None:
    add_serve_arguments(p)
    g = p.add_argument_group("cluster")
    g.add_argument("--address", default=None,
                   help="Ray cluster to join: 'auto' (the one started on this machine with 'ray start') or "
                        "HOST:PORT; default: start a Ray instance here for this run")
    g.add_argument("--replicas", type=at_least(1), default=1, help="engine replicas (the start count when "
                   "autoscaling)")
    g.add_argument("--min-replicas", type=at_least(1), default=1, help="autoscaling: fewest engine replicas")
    g.add_argument("--max-replicas", type=at_least(1), default=None,
                   help="autoscaling: most engine replicas (turns autoscaling on)")
    g.add_argument("--target-ongoing", type=at_least(0, float, above=True), default=None, metavar="N",
                   help="autoscaling: requests per replica to aim for (default: --max-batch)")
    g.add_argument("--upscale-delay", type=at_least(0, float), default=30.0, metavar="S",
                   help="autoscaling: seconds of overload before adding replicas")
    g.add_argument("--downscale-delay", type=at_least(0, float), default=600.0, metavar="S",
                   help="autoscaling: seconds of underload before removing replicas")
    g.add_argument("--autoscale-window", type=at_least(0, float, above=True), default=30.0, metavar="S",
                   help="autoscaling: seconds of load history averaged")
    g.add_argument("--replica-cpus", type=at_least(0, float), default=1.0,
                   help="CPUs reserved per engine replica")
    g.add_argument("--replica-gpus", type=at_least(0, float), default=None,
                   help="GPUs per engine replica (default: 1 with --device cuda*, else 0)")
    g.add_argument("--max-replicas-per-node", type=at_least(1), default=None, metavar="N",
                   help="spread engine replicas: at most N on one node")
    g.add_argument("--ingress-replicas", type=at_least(1), default=1, help="replicas of the HTTP routes")
    g.add_argument("--router", choices=("voice", "default"), default="voice",
                   help="voice: a voice's requests go to the replica that served it before (its prompt is in "
                        "that replica's prefix cache); default: Ray's power-of-two choice")
    g.add_argument("--affinity-slack", type=at_least(0), default=2, metavar="N",
                   help="voice router: leave a voice's replica when it runs more than N requests more than the "
                        "least-busy one")


def parse_flags(args: dict) -> argparse.Namespace:
    """``cluster run`` flags from a dict (Serve's application ``args``): ``{"max_batch": 4}`` is
    ``--max-batch 4``; true booleans are bare flags, lists repeat the flag."""
    parser = Parser(prog="higgs-audio cluster run", parents=[common_parser()])
    add_cluster_arguments(parser)
    argv = []
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value not in (False, None):
            for item in value if isinstance(value, (list, tuple)) else [value]:
                argv += [flag, str(item)]
    return parser.parse_args(argv)


def app(args: dict | None = None):
    """The application builder of ``serve run higgs_audio.cluster:app key=value ...`` and of config files."""
    from higgs_audio.cluster.deployments import build_app

    return build_app(parse_flags(args or {}))


def run_cluster(args: argparse.Namespace, library=None) -> int:
    try:
        import ray
        from ray import serve

        from higgs_audio.cluster.deployments import APP_NAME, build_app
    except ImportError as e:
        raise SystemExit(f"the cluster needs its extra packages: pip install 'higgs-audio[cluster]' ({e})") from None

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ray.init(address=args.address, include_dashboard=False, logging_level=args.log_level.upper())
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(build_app(args), name=APP_NAME, route_prefix="/")
        print(f"higgs-audio cluster: serving on http://{args.host}:{args.port} (Ctrl-C stops)", flush=True)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        stop.wait()
        serve.delete(APP_NAME)  # engines drain their running streams
        serve.shutdown()
    finally:
        ray.shutdown()
    return 0
