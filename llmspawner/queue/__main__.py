"""``python -m llmspawner.queue``: run the ``llm-queue`` hub service (see :mod:`.service`)."""

from .service import main

if __name__ == "__main__":
    main()
