"""Exception tree shared by every EdgeFleet package.

::

    EdgeFleetError
     +-- BundleError                  anything wrong with a bundle
     |    +-- ManifestError           manifest bytes that do not parse or validate
     |    +-- SignatureError          envelope not signed by a trusted key
     |    +-- DigestMismatchError     blob bytes whose sha256 differs from the manifest
     |    +-- SizeMismatchError       blob longer or shorter than the manifest says
     |    +-- ExpiredBundleError      manifest past its ``expires`` time
     |    +-- RollbackError           release_counter lower than one already installed
     |    +-- MissingFileError        a file the manifest names is absent
     +-- KeyFileError                 a key file that cannot be read or has the wrong type
     +-- WireError                    an MQTT payload that does not parse or validate
     +-- DatasetError                 an .npz dataset that is unsafe or malformed

Other packages hang their own families under :class:`EdgeFleetError`
(``compress.errors.CompressError``, ``controller.errors.ServiceError``,
``agent.errors.AgentError``).
"""

from __future__ import annotations


class EdgeFleetError(Exception):
    """Root of every error EdgeFleet raises on purpose."""


class BundleError(EdgeFleetError):
    """A bundle (manifest, envelope or blob) failed to verify."""


class ManifestError(BundleError):
    """The manifest bytes do not parse or a field is invalid."""


class SignatureError(BundleError):
    """The envelope carries no valid signature from a trusted key."""


class DigestMismatchError(BundleError):
    """A blob's sha256 differs from the one the manifest names."""


class SizeMismatchError(BundleError):
    """A blob's length differs from the one the manifest names."""


class ExpiredBundleError(BundleError):
    """The manifest's ``expires`` time has passed."""


class RollbackError(BundleError):
    """The manifest's ``release_counter`` is lower than one already installed."""


class MissingFileError(BundleError):
    """A file named by the manifest is not present."""


class KeyFileError(EdgeFleetError):
    """A key file cannot be read, or holds the wrong kind of key."""


class WireError(EdgeFleetError):
    """An MQTT payload does not parse or does not match its schema."""


class DatasetError(EdgeFleetError):
    """An ``.npz`` dataset (a capture upload) is malformed, unsafe, or not what was expected."""
