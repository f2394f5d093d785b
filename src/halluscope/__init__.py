"""halluscope: a workbench for autoregressive image and video models and for probing how
they "hallucinate".

Subpackages, each importing only those to its right: ``app`` → ``probes`` → ``gpt``,
``tokenizers`` → ``data``. The top-level modules ``errors`` and ``io`` sit below all of
them; ``cli`` sits above all of them.
"""

__version__ = "0.1.0"
