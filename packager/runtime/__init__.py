"""The loader shipped inside every release (copied verbatim; imports only stdlib, torch, transformers)."""
