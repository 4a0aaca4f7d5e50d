"""`llmcluster bench`: raw vLLM and llmcluster side by side under vLLM's own benchmark client."""
