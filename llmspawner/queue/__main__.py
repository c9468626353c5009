"""``python -m llmspawner.queue``: run the ``llm-queue`` hub service (see :mod:`.service`).

Everything is under ``if __name__ == "__main__"``: the queue's worker processes (the
``spawn`` start method) import this module again as ``__mp_main__``, and importing the
service there cost each worker 0.45 s of CPU on a quiet machine, seconds under load, before
its first task.
"""

if __name__ == "__main__":
    # First, before the service's imports: no second copy next to a restarted hub.
    from llmspawner.lifeline import hold_to_parent

    hold_to_parent()

    from llmspawner.queue.service import main

    main()
