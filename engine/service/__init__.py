"""The HTTP service: ``api`` (FastAPI app), ``serve`` (Ray Serve deployment, ``deploy/serve.yaml``
names ``engine.service.serve:build_app``) and ``submit`` (Ray job submission). Never imports ``lab``.
"""
