"""``python -m llmspawner.queue``: run the ``llm-queue`` hub service (see :mod:`.service`)."""

if __name__ == "__main__":
    # First, before the service's imports: no second copy next to a restarted hub.
    from llmspawner.lifeline import hold_to_parent

    hold_to_parent()

from .service import main  # noqa: E402

if __name__ == "__main__":
    main()
