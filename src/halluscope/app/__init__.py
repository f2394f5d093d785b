"""halluscope.app owns the Gradio front end for interactive conditional sampling. It may
import everything below it (probes, gpt, tokenizers, data); nothing imports it."""
