"""The training worker: the Celery app, the train task, leases and heartbeats, and the reaper.

``worker`` imports ``core`` (the engine), ``store`` (the database and
artifacts) and ``service`` (settings, logging, the queue contract), never
``api``. Start a worker with :func:`worker.main.run_worker` (``embedmix
worker``) and a stand-alone reaper with :func:`worker.main.serve_reaper`
(``embedmix reaper``), which hands :func:`worker.reaper.run_reaper` a Celery
app to send with; the task body is :func:`worker.train_task.run_job`.
"""
