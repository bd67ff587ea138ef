"""outrigger_client: the Python side of Outrigger, a sidecar daemon that observes applications.

What is here, one module each:

- ``client``: :class:`Outrigger`, the fail-open client (``observe`` never raises and never waits
  on the daemon; a background thread writes batches to the daemon's unix socket), with
  ``run()``, ``flush()``, ``should_sample()``, ``report_anomaly()``, ``set_rate()``,
  ``health()`` and ``stats``.
- ``sidecar``: :class:`Sidecar`, which starts ``outrigger run`` and supervises it (readiness,
  health, memory, restarts with back-off).
- ``pytest_plugin``: the ``outrigger`` pytest plugin (each test a run; the session's summary).
- ``_control``: the control API over HTTP, used by the other two.

Nothing here depends on anything outside the standard library. Importing the package starts
nothing; an :class:`Outrigger` starts its flusher thread, a :class:`Sidecar` its supervisor
when started.
"""

from .client import DEFAULT_SOCKET, Outrigger, Run
from .sidecar import Sidecar, SidecarError

__version__ = "0.2.0"

__all__ = ["Outrigger", "Run", "Sidecar", "SidecarError", "DEFAULT_SOCKET", "__version__"]
