"""Where units are made: ``pool`` (the executors: ``UnitPool``, Ray actors with per-unit timeouts
and retries; ``InProcessPool`` for ``memory://`` outputs), ``unit_worker`` (the Ray actor) and
``unit`` (making one ``records.Unit``: generate, label, write, commit).

Above ``engine``: it imports the library, and the library finds these executors by name in
``engine.registry.EXECUTORS`` without importing this package."""
