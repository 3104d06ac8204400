"""What a launch command serves, measured from an HTTP client.

``measure_command`` starts an exported command (``autotune serve ...`` or ``llama-server ...``)
on a free local port, waits for ``/health``, times completions over HTTP and stops the server's
whole process group. ``server`` owns the process, ``client`` the timed requests, ``figures``
the values that come back, ``measure`` puts them together.
"""

from autotune.served.figures import ServedFigures, ServeFailed
from autotune.served.measure import measure_command

__all__ = ["ServeFailed", "ServedFigures", "measure_command"]
