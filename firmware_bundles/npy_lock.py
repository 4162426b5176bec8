"""One lock around loading ``.npy``/``.npz`` arrays in this process.

``np.load`` parses each array's header with ``ast.literal_eval``, and CPython 3.11's AST
constructor fails spuriously under threads ("SystemError: AST constructor recursion
depth mismatch", python/cpython#106905). Seen in CI: agents of one simulated fleet ran
their health checks at the same moment and one failed with it. Loading under this lock
serialises the header parsing; the arrays involved (golden inputs, a dataset column) are
small next to the inference around them.
"""

from __future__ import annotations

import threading

NPY_LOAD_LOCK = threading.Lock()
