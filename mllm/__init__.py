"""The multimodal model kit shared by recall and rerank: loading a checkpoint through its
family's record, prompt tokenisation, batching, and text normalisation."""
