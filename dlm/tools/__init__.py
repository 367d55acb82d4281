"""Tools built on the core, kept apart from it: benchmarking (``benchmark``), the demo testbed's
evaluation (``evaluation``) and tasks (``tasks``), the demo model's training (``train``), the canvas printer
(``show``) and writers of random checkpoints in the real on-disk layouts (``checkpoints``,
``qwen2_checkpoints``). The core (``dlm.pipeline`` and the four component packages) imports none of them."""
