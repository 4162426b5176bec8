"""Service functions: take a Session (and the adapters they need), raise ServiceError."""
