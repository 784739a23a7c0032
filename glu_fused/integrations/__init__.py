"""Integrations with other libraries, each in its own module and imported on demand, so that
``import glu_fused`` never needs them.

- ``glu_fused.integrations.transformers``: swaps the GLU activations of Hugging Face models
  (LLaMA, Mistral, Qwen2/3, Gemma, gpt-oss and the MoE models built the same way) for the
  fused ops: ``patch(model)`` and ``unpatch(model)``.
"""
