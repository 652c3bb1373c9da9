"""The HTTP API (``api.py``) as a Ray Serve application.

``build_app`` is the app builder a Serve config names (``import_path: engine.service.serve:build_app``,
see deploy/serve.yaml); ``serve_api`` is ``dde serve``. Settings, the token included, are
read where the app is built (the CLI's process, or the cluster for ``serve deploy`` and
KubeRay) and travel to the replicas as the deployment's init argument.
"""

from __future__ import annotations

from ray import serve

from ..errors import UserError
from .api import Settings, create_app, load_settings

__all__ = ["ApiDeployment", "build_app", "serve_api", "APP_NAME"]

APP_NAME = "dde-api"


@serve.deployment(name=APP_NAME, ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=32)
@serve.ingress()
class ApiDeployment:
    def __init__(self, settings: Settings):
        self.settings = settings

    def __serve_build_asgi_app__(self):
        # built on the replica: the app (and its middleware) is never pickled
        return create_app(self.settings)


def build_app(args: dict):
    """Serve app builder: ``args`` are the Serve config's ``args:`` (see ``api.load_settings``)."""
    return ApiDeployment.bind(load_settings(args))


def serve_api(settings: Settings, host: str, port: int) -> None:
    """Run the API on the Ray cluster ``ray.init()`` finds (RAY_ADDRESS, or a local one) until
    Ctrl-C or SIGTERM, then delete it. Serve's proxy listens on host:port unless Serve already runs there."""
    import signal

    from ray.serve.context import _get_global_client

    serve.start(http_options={"host": host, "port": port})
    config = _get_global_client().http_config  # no public API tells the options Serve really runs with
    running = (config.host, config.port)
    if running != (host, port):  # Serve keeps the proxy it already runs and ignores new options
        raise UserError(f"--port: expected Serve's proxy on {host}:{port}, got one already running on this cluster "
                        f"on {running[0]}:{running[1]}, which Serve keeps; use --host {running[0]} --port "
                        f"{running[1]}, or stop it first (`serve shutdown -a DASHBOARD`)")
    # after ray.init (in serve.start), which installs its own SIGTERM handler; SIGINT too, as
    # a shell ignores it in commands it starts in the background
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.default_int_handler)
    try:
        serve.run(ApiDeployment.bind(settings), name=APP_NAME, route_prefix="/", blocking=True)
    except KeyboardInterrupt:
        serve.delete(APP_NAME)
