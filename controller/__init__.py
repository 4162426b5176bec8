"""The EdgeFleet controller: REST API, device-report ingest, blob serving, deployments.

Start one with ``edgefleet controller serve`` (settings from ``EDGEFLEET_*``, see
:mod:`controller.settings`), or in-process with :class:`controller.server.ControllerServer`.
Nothing is created at import time: :func:`controller.app.create_app` builds everything.
"""
