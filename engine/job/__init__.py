"""The job: the driver and the views of a job.

Prompts and references become a pool (``prompts``, ``references``, ``prompt_limits``), the
``planner`` cuts waves of units, the ``runner`` drives them through an executor (registered in
``engine.registry.EXECUTORS``; ``workers/`` provides them) and ``finalize`` publishes the dataset.
``progress``, ``status``, ``preview`` and ``report`` are views of a job. This layer sits above
``heads``, ``backends``, ``models`` and ``output`` and imports neither ``lab`` nor ``service``.
"""
