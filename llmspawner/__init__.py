"""llmspawner: a JupyterHub extension for sharing a few GPUs for LLM fine-tuning.

Users pick a GPU profile at spawn and get LlamaBoard (LLaMA-Factory's web UI) in their own
Kubernetes pod, with their own folder on a shared PVC and their own MLflow experiment.
"""

__version__ = "0.1.0"


def __getattr__(name):
    # Lazy, so that importing the package (e.g. for the singleuser entry point) does not
    # import kubespawner and the Kubernetes client.
    if name == "LLMSpawner":
        from .spawner import LLMSpawner

        return LLMSpawner
    raise AttributeError(name)


__all__ = ["LLMSpawner", "__version__"]
