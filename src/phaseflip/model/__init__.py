"""The model under study: loading, architecture adapters, attention, batched scoring and sampling."""
