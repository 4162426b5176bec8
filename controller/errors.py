"""Errors the controller's services raise on purpose.

::

    EdgeFleetError                       (firmware_bundles.errors)
     +-- ServiceError                    a request the controller refuses
     |    +-- NotFoundError              404: no such model, bundle, device, deployment, blob
     |    +-- ConflictError              409: the thing exists already
     |    +-- InvalidRequestError        422: a value that is wrong, named with the value
     |    +-- PayloadTooLargeError       413: an upload over EDGEFLEET_MAX_UPLOAD_BYTES
     +-- SettingsError                   a bad EDGEFLEET_* variable (startup error)

Services raise these; one exception handler in :mod:`controller.app` maps them (and
:class:`~firmware_bundles.errors.BundleError`, 422) to HTTP answers
``{"detail": "<message>"}``. Nothing below the routes raises ``HTTPException``.
"""

from __future__ import annotations

from firmware_bundles.errors import EdgeFleetError


class ServiceError(EdgeFleetError):
    """A request the controller refuses; ``status_code`` is the HTTP answer."""

    status_code = 400


class NotFoundError(ServiceError):
    """The model, bundle, device, deployment or blob named does not exist."""

    status_code = 404


class ConflictError(ServiceError):
    """The thing to create exists already."""

    status_code = 409


class InvalidRequestError(ServiceError):
    """A field has a value the controller cannot accept."""

    status_code = 422


class PayloadTooLargeError(ServiceError):
    """An upload is larger than ``EDGEFLEET_MAX_UPLOAD_BYTES``."""

    status_code = 413


class SettingsError(EdgeFleetError):
    """An ``EDGEFLEET_*`` setting is missing or invalid."""
