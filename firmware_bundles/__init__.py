"""EdgeFleet bundle format: signed manifest, DSSE envelope, content-addressed blobs."""
