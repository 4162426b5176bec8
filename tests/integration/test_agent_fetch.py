"""The agent's small-document fetch over real HTTP: a body cut short is a download to
retry (the controller died mid-response), never a bundle that fails its digest."""

from __future__ import annotations

import pytest

from agent.errors import UpdateError
from agent.fetch import fetch_small
from tests.blob_server import BlobServer

ENVELOPE = b'{"payload": "' + b"x" * 2000 + b'"}'


def test_a_cut_off_envelope_is_a_download_error_and_a_whole_one_arrives(
    blobs: BlobServer,
) -> None:
    blobs.add({"env": ENVELOPE})
    url = f"{blobs.base_url}/env"
    for cut in (0, 100):
        blobs.cut_after["env"] = cut
        with pytest.raises(UpdateError) as caught:
            fetch_small(url, max_bytes=1 << 20, timeout=5)
        assert caught.value.code == "download"
        assert f"ended after {cut} of {len(ENVELOPE)} bytes" in str(caught.value)
    assert fetch_small(url, max_bytes=1 << 20, timeout=5) == ENVELOPE
    with pytest.raises(UpdateError, match="larger than the 100-byte limit"):
        fetch_small(url, max_bytes=100, timeout=5)
