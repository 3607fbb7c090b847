"""The training worker: the Celery app, the train task, leases and heartbeats, and the reaper.

``worker`` imports ``core`` (the engine), ``store`` (the database and
artifacts) and ``service`` (settings, logging, the queue contract), never ``api``. Start a worker with :func:`worker.main.run_worker`
(``embedmix worker``) and a stand-alone reaper with
:func:`worker.main.serve_reaper` or :func:`worker.reaper.run_reaper`
(``embedmix reaper``); the task body is :func:`worker.train_task.run_job`.
"""
