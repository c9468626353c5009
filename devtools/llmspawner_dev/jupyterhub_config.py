"""The dev stack's hub configuration: the dev settings, then the repository's config.

``llmspawner dev`` (and the e2e tests' stack) start the hub with ``jupyterhub -f`` this file.
It first sets what only the emulated cluster needs (:func:`llmspawner_dev.hubconfig.configure_dev`:
the :class:`~llmspawner_dev.spawner.DevSpawner`, the local "image", timeouts), then runs the
production configuration, ``LLMSPAWNER_DEV_BASE_CONFIG`` (default: the repository's
``jupyterhub_config.py``), on the same config object, as zero-to-jupyterhub runs
``hub.extraConfig`` after the chart's own settings. The production configuration only fills
in what is unset, so the dev settings stand, and the batch queue copies them (image, ...) as
it would a chart's.

Not traitlets' ``load_subconfig``: it gives the loaded file a fresh, empty config and merges
it over this one afterwards, so the production defaults (``spawner_class = "llm"``, the
queue's copy of the image) would win over the dev settings.
"""

import runpy

from llmspawner_dev.hubconfig import base_config, configure_dev

c = get_config()  # noqa: F821 - provided by JupyterHub when it loads this file
configure_dev(c)
runpy.run_path(
    str(base_config()),
    init_globals={
        "c": c,
        "get_config": get_config,  # noqa: F821
        "load_subconfig": load_subconfig,  # noqa: F821 - provided by traitlets' loader
    },
)
