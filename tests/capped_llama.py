"""A Llama whose memory holds only so many sequences at once, for the out-of-memory tests (SFT's
in test_gpu_path.py, the preference methods' in test_preference_jobs.py): registered with
transformers once per process, however many test modules use it."""

from __future__ import annotations

import functools

import torch


@functools.cache
def register_capped_llama():
    """A Llama whose memory holds ``max_rows`` sequences at once: its token embedding, the first
    module every forward pass runs (trl's fused-head forward calls the backbone directly), raises
    torch.OutOfMemoryError on a larger batch, as the CUDA caching allocator does when an allocation
    fails."""
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    class CappedLlamaConfig(LlamaConfig):
        model_type = "ftkit-capped-llama"

        def __init__(self, max_rows: int = 2, **kwargs):
            self.max_rows = max_rows
            super().__init__(**kwargs)

    class CappedEmbedding(torch.nn.Embedding):
        batches: list[int] = []  # rows of every training batch the model was asked to hold

        def __init__(self, *args, max_rows: int, **kwargs):
            super().__init__(*args, **kwargs)
            self.max_rows = max_rows

        def forward(self, input_ids):
            rows = input_ids.shape[0]
            if self.training:
                CappedEmbedding.batches.append(rows)
            if rows > self.max_rows:
                gib = rows * input_ids.shape[1] / 2**10
                raise torch.OutOfMemoryError(
                    f"CUDA out of memory. Tried to allocate {gib:.2f} GiB (batch of {rows} rows, "
                    f"room for {self.max_rows})"
                )
            return super().forward(input_ids)

    class CappedLlama(LlamaForCausalLM):
        config_class = CappedLlamaConfig
        batches = CappedEmbedding.batches

        def __init__(self, config):
            super().__init__(config)
            plain = self.model.embed_tokens
            self.model.embed_tokens = CappedEmbedding(
                plain.num_embeddings,
                plain.embedding_dim,
                plain.padding_idx,
                max_rows=config.max_rows,
            )

    AutoConfig.register(CappedLlamaConfig.model_type, CappedLlamaConfig)
    AutoModelForCausalLM.register(CappedLlamaConfig, CappedLlama)
    return CappedLlamaConfig, CappedLlama
