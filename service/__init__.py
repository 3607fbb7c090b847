"""What the service's processes share: settings, logging, the queue contract and the id formats.

``api``, ``worker``, ``store`` and ``cli`` import it; it imports none of them
(nor ``core``), so each side can depend on it without depending on the other.

* :mod:`service.settings`: the ``EMBEDMIX_*`` settings every process reads.
* :mod:`service.jsonlog`: one JSON line per log record, with the job id.
* :mod:`service.queue`: the train task's name, its queue, and the one function that sends it.
* :mod:`service.ids`: the public id formats (``job_`` + 20 alphanumerics...).
"""
