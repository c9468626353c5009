"""What runs inside the user's pod, next to the singleuser Jupyter server.

- :mod:`llmspawner.singleuser.llamaboard` — the jupyter-server-proxy entry that starts
  LlamaBoard (``llamafactory-cli webui``) on demand and serves it at
  ``/user/<name>/llamaboard/``, with a "LlamaBoard" tile in the JupyterLab launcher.
  It is registered as the ``llamaboard`` entry point of the
  ``jupyter_serverproxy_servers`` group in ``pyproject.toml``.
- :mod:`llmspawner.singleuser.launch` — a tiny ``chdir`` + ``exec`` wrapper, because
  jupyter-server-proxy has no working-directory setting for the processes it starts.

Nothing here is imported by the hub; it needs jupyter-server-proxy >= 4.4 in the user's image.
"""
