"""Test helpers: shard sets built from arrays, local S3 and HTTP servers, a torchrun runner."""
